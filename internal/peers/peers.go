// Package peers starts and drives the real iSCSI peers installed on the
// machine (tgtd, istgt, libiscsi's command-line tools and tshark) for tests
// and benchmarks.
//
// Every peer listens on 127.0.0.1 only, on ports chosen at run time, and is
// stopped by process id. Helpers that take a testing.TB register their own
// cleanup; the *Process variants are for programs such as the benchmark
// harness that have no testing.TB.
package peers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Loopback is the only address the peers listen on and the only address
// tests may send traffic to.
const Loopback = "127.0.0.1"

// DefaultStartTimeout bounds how long a Start function waits for a peer to
// become ready when its options leave the timeout at zero.
const DefaultStartTimeout = 15 * time.Second

// aptPackages maps each peer binary to the Debian package that provides it.
var aptPackages = map[string]string{
	"tgtd":                 "tgt",
	"tgtadm":               "tgt",
	"istgt":                "istgt",
	"istgtcontrol":         "istgt",
	"tshark":               "tshark",
	"dumpcap":              "wireshark-common",
	"editcap":              "wireshark-common",
	"capinfos":             "wireshark-common",
	"iscsi-inq":            "libiscsi-bin",
	"iscsi-ls":             "libiscsi-bin",
	"iscsi-perf":           "libiscsi-bin",
	"iscsi-readcapacity16": "libiscsi-bin",
	"iscsi-swp":            "libiscsi-bin",
	"iscsi-test-cu":        "libiscsi-bin",
	"qemu-system-x86_64":   "qemu-system-x86",
}

// AllPeers lists the binaries that a CI machine must provide; see
// RequireAllInCI.
var AllPeers = []string{"tgtd", "tgtadm", "istgt", "tshark", "iscsi-inq", "iscsi-perf", "iscsi-ls"}

// AptPackage returns the Debian package that provides the binary bin, or bin
// itself when the package is not known.
func AptPackage(bin string) string {
	if p, ok := aptPackages[bin]; ok {
		return p
	}
	return bin
}

// InCI reports whether the environment variable CI is "true", in which case
// missing peers are failures rather than reasons to skip.
func InCI() bool {
	return os.Getenv("CI") == "true"
}

// Missing returns those of bins that are not found on PATH.
func Missing(bins ...string) []string {
	var missing []string
	for _, b := range bins {
		if _, err := exec.LookPath(b); err != nil {
			missing = append(missing, b)
		}
	}
	return missing
}

// Require stops the test when any of bins is not on PATH: it fails the test
// when running in CI (see InCI) and skips it otherwise, naming the binary and
// the apt package that provides it.
func Require(t testing.TB, bins ...string) {
	t.Helper()
	missing := Missing(bins...)
	if len(missing) == 0 {
		return
	}
	var parts []string
	pkgs := map[string]bool{}
	var pkgList []string
	for _, b := range missing {
		p := AptPackage(b)
		parts = append(parts, fmt.Sprintf("%s (apt package %s)", b, p))
		if !pkgs[p] {
			pkgs[p] = true
			pkgList = append(pkgList, p)
		}
	}
	msg := fmt.Sprintf("peer binaries not on PATH: %s; install with `apt-get install %s` or `make deps`",
		strings.Join(parts, ", "), strings.Join(pkgList, " "))
	if InCI() {
		t.Fatalf("CI=true: %s", msg)
	}
	t.Skipf("skipping: %s", msg)
}

// PickFreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
// Another process may take it before the caller binds it, so callers that
// start servers should retry with a new port on a bind failure, as the Start
// functions of this package do.
func PickFreePort() (int, error) {
	l, err := net.Listen("tcp4", net.JoinHostPort(Loopback, "0"))
	if err != nil {
		return 0, fmt.Errorf("peers: pick free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, fmt.Errorf("peers: pick free port: %w", err)
	}
	return port, nil
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago,
// failing the test if none can be found.
func FreePort(t testing.TB) int {
	t.Helper()
	port, err := PickFreePort()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// pickFreePorts returns n distinct ports that were free a moment ago.
func pickFreePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	seen := map[int]bool{}
	for tries := 0; len(ports) < n; tries++ {
		if tries > 100*n {
			return nil, errors.New("peers: could not find distinct free ports")
		}
		p, err := PickFreePort()
		if err != nil {
			return nil, err
		}
		if !seen[p] {
			seen[p] = true
			ports = append(ports, p)
		}
	}
	return ports, nil
}

// randomControlPort returns a tgtd control-socket number unlikely to be in
// use by another tgtd on the machine. tgtd's control port is not a TCP port
// but the suffix of /var/run/tgtd/socket.N; collisions are detected by tgtd
// itself, which then exits, and the caller retries. tgtd rejects numbers above
// 32767.
func randomControlPort() int {
	return 16384 + rand.IntN(16384) // tgtd accepts 0 to 32767
}

// pollUntil calls cond every interval until it returns true or an error, or
// until ctx is done.
func pollUntil(ctx context.Context, interval time.Duration, cond func() (bool, error)) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// TailFile returns at most the last n lines of the file at path, or a note
// saying why it could not be read.
func TailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	return tailLines(b, n)
}

func tailLines(b []byte, n int) string {
	b = bytes.TrimRight(b, "\n")
	lines := bytes.Split(b, []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// runCmd runs name with args under a timeout and returns its combined
// output; the error includes the output when the command fails.
func runCmd(ctx context.Context, timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}
