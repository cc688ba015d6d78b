package peers

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// TestPeersInstalled makes CI fail, rather than skip every peer test, when a
// peer is missing.
func TestPeersInstalled(t *testing.T) {
	missing := Missing(AllPeers...)
	if len(missing) == 0 {
		return
	}
	var names []string
	for _, b := range missing {
		names = append(names, fmt.Sprintf("%s (apt package %s)", b, AptPackage(b)))
	}
	if InCI() {
		t.Fatalf("CI=true but peers are missing: %s; run `make deps`", strings.Join(names, ", "))
	}
	t.Skipf("peers missing (tests using them will skip): %s", strings.Join(names, ", "))
}

func TestFreePort(t *testing.T) {
	port := FreePort(t)
	if port <= 0 || port > 65535 {
		t.Fatalf("port %d", port)
	}
	l, err := net.Listen("tcp4", net.JoinHostPort(Loopback, strconv.Itoa(port)))
	if err != nil {
		t.Fatalf("port %d not usable: %v", port, err)
	}
	l.Close()
	ports, err := pickFreePorts(3)
	if err != nil {
		t.Fatal(err)
	}
	if ports[0] == ports[1] || ports[1] == ports[2] || ports[0] == ports[2] {
		t.Fatalf("ports not distinct: %v", ports)
	}
}

// fakeTB records how Require ends a test.
type fakeTB struct {
	testing.TB
	mu              sync.Mutex
	skipped, failed string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Skipf(format string, args ...any) {
	f.mu.Lock()
	f.skipped = fmt.Sprintf(format, args...)
	f.mu.Unlock()
	panic(f)
}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.failed = fmt.Sprintf(format, args...)
	f.mu.Unlock()
	panic(f)
}

func runRequire(f *fakeTB, bins ...string) {
	defer func() {
		if r := recover(); r != nil && r != f {
			panic(r)
		}
	}()
	Require(f, bins...)
}

func TestRequire(t *testing.T) {
	t.Setenv("CI", "")
	f := &fakeTB{TB: t}
	runRequire(f, "sh")
	if f.skipped != "" || f.failed != "" {
		t.Fatalf("present binary: skipped %q failed %q", f.skipped, f.failed)
	}
	runRequire(f, "sh", "no-such-peer-binary")
	if !strings.Contains(f.skipped, "no-such-peer-binary") || f.failed != "" {
		t.Fatalf("outside CI: skipped %q failed %q", f.skipped, f.failed)
	}

	t.Setenv("CI", "true")
	f = &fakeTB{TB: t}
	runRequire(f, "tgtd-missing-for-test")
	if !strings.Contains(f.failed, "tgtd-missing-for-test") || f.skipped != "" {
		t.Fatalf("in CI: skipped %q failed %q", f.skipped, f.failed)
	}
	if got := AptPackage("tgtadm"); got != "tgt" {
		t.Errorf("AptPackage(tgtadm) = %q", got)
	}
	if got := AptPackage("iscsi-perf"); got != "libiscsi-bin" {
		t.Errorf("AptPackage(iscsi-perf) = %q", got)
	}
}

func TestLibiscsiURL(t *testing.T) {
	if got, want := LibiscsiURL("127.0.0.1:3260", "iqn.x:y", 1, "", ""), "iscsi://127.0.0.1:3260/iqn.x:y/1"; got != want {
		t.Errorf("got %q want %q", got, want)
	}
	if got, want := LibiscsiURL("127.0.0.1:3260", "iqn.x:y", 0, "u", "p"), "iscsi://u%p@127.0.0.1:3260/iqn.x:y/0"; got != want {
		t.Errorf("got %q want %q", got, want)
	}
}
