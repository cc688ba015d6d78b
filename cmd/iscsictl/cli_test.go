package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/goiscsi/iscsi/iscsitest"
)

const cliTarget = "iqn.2026-01.org.goiscsi:cli"

// cliTestTarget starts an in-memory target with LUN 0 of 4 MiB and LUN 1
// of 8 MiB.
func cliTestTarget(t *testing.T, cfg iscsitest.Config) *iscsitest.Target {
	t.Helper()
	cfg.Name = cliTarget
	if cfg.LUNs == nil {
		cfg.LUNs = []int64{4 << 20, 8 << 20}
	}
	tg := iscsitest.NewTarget(cfg)
	t.Cleanup(tg.Close)
	return tg
}

// oneLine checks that a refused command line says why in one line of
// stderr, naming want, with status 5 and no usage screen.
func oneLine(t *testing.T, r result, want string) {
	t.Helper()
	r.want(t, exitInvalidArg)
	lines := strings.Split(strings.TrimRight(r.stderr, "\n"), "\n")
	if len(lines) != 1 || !strings.Contains(r.stderr, want) || strings.Contains(r.stderr, "Flags:") {
		t.Errorf("stderr %q: want one line containing %q", r.stderr, want)
	}
}

// TestCLIConventions: GNU flags with short forms, completion for the three
// shells and for a flag's values, a version command, and refused command
// lines in one line with status 5.
func TestCLIConventions(t *testing.T) {
	t.Parallel()
	for shell, want := range map[string]string{"bash": "__start_iscsictl", "zsh": "#compdef iscsictl", "fish": "complete -c iscsictl"} {
		if r := iscsictl(t, "completion", shell).want(t, exitOK); !strings.Contains(r.stdout, want) {
			t.Errorf("completion %s: no %q in\n%.300s", shell, want, r.stdout)
		}
	}
	// The shell asks the binary for a flag's values.
	r := iscsictl(t, "__complete", "logout", "--in-flight", "").want(t, exitOK)
	for _, w := range []string{"drain\n", "abort\n", "fail\n"} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("completing --in-flight: no %q in %q", w, r.stdout)
		}
	}
	r = iscsictl(t, "__complete", "log").want(t, exitOK)
	if !strings.Contains(r.stdout, "login\t") || !strings.Contains(r.stdout, "logout\t") {
		t.Errorf("completing a command: %q", r.stdout)
	}

	r = iscsictl(t, "version").want(t, exitOK)
	if !strings.Contains(r.stdout, "module    github.com/goiscsi/iscsi") || !strings.Contains(r.stdout, "revision  ") {
		t.Errorf("version:\n%s", r.stdout)
	}
	v := iscsictl(t, "version", "-j").want(t, exitOK).json(t)
	if path(t, v, "schemaVersion") != 1.0 || path(t, v, "version", "module") != "github.com/goiscsi/iscsi" || path(t, v, "version", "goVersion") == "" {
		t.Errorf("version --json: %v", v)
	}

	// Short forms: -t, -n, -j; --flag=value.
	v = iscsictl(t, "logout", "-t", "iqn.2001-04.com.example:disk1", "-n", "0", "-j").want(t, exitNotFound).json(t)
	if path(t, v, "logout", "outcome") != "session not found" {
		t.Errorf("logout -t -n -j: %v", v)
	}
	iscsictl(t, "logout", "--target=iqn.2001-04.com.example:disk1", "--sessions=0", "--gone-ok").want(t, exitOK)

	// Refused in one line.
	oneLine(t, iscsictl(t, "sessions", "extra"), `unexpected argument "extra"`)
	oneLine(t, iscsictl(t, "discover", "-p", "127.0.0.1", "surplus"), `unexpected argument "surplus"`)
	oneLine(t, iscsictl(t, "decode", "a.pcap", "b.pcap"), `unexpected argument "b.pcap"`)
	oneLine(t, iscsictl(t, "discover", "--no-such-flag"), "unknown flag: --no-such-flag")
	oneLine(t, iscsictl(t, "frobnicate"), `unknown command "frobnicate"`)
	oneLine(t, iscsictl(t, "write", "-p", "127.0.0.1", "--in", "x", "--blocks", "1"), "--in and --blocks exclude each other")
	oneLine(t, iscsictl(t, "write", "-p", "127.0.0.1", "--blocks", "1", "--fill", "7", "--random"), "--fill and --random exclude each other")
	oneLine(t, iscsictl(t, "logout", "-t", "iqn.2001-04.com.example:disk1", "--session", "1", "--session-index", "1"),
		"--session and --session-index exclude each other")
	oneLine(t, iscsictl(t, "perf", "-p", "127.0.0.1", "--qd", "many"), `invalid argument "many" for "--qd"`)
	oneLine(t, iscsictl(t, "login", "-p", "127.0.0.1", "--header-digest=sometimes"), "want none, offer or required")
	// --json: the usage error is a JSON document too.
	v = iscsictl(t, "sessions", "extra", "--json").want(t, exitInvalidArg).json(t)
	if path(t, v, "schemaVersion") != 1.0 || path(t, v, "exitCode") != 5.0 || !strings.Contains(path(t, v, "error").(string), "extra") {
		t.Errorf("usage error as JSON: %v", v)
	}

	// help COMMAND on stdout, -h on stderr (as before), both with the
	// command's flags and the global ones.
	r = iscsictl(t, "help", "login").want(t, exitOK)
	if !strings.Contains(r.stdout, "Usage: iscsictl login") || !strings.Contains(r.stdout, "-p, --portal") || !strings.Contains(r.stdout, "-j, --json") {
		t.Errorf("help login:\n%s", r.stdout)
	}
	r = iscsictl(t, "node", "add", "--help").want(t, exitOK)
	if !strings.Contains(r.stderr, "Usage: iscsictl node add") || !strings.Contains(r.stderr, "--startup") {
		t.Errorf("node add --help:\n%s", r.stderr)
	}
}

// TestHelpMatchesREADME: every line of `iscsictl help` that names a
// command or an exit status is in the README, word for word.
func TestHelpMatchesREADME(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	r := iscsictl(t, "help").want(t, exitOK)
	inSection := false
	n := 0
	for _, line := range strings.Split(r.stdout, "\n") {
		switch {
		case line == "Commands:" || line == "Exit status:":
			inSection = true
			continue
		case line == "":
			inSection = false
			continue
		}
		if !inSection {
			continue
		}
		n++
		if !strings.Contains(string(readme), line+"\n") {
			t.Errorf("README.md lacks the help line %q", line)
		}
	}
	if n < len(commands)+7 {
		t.Errorf("%d command and exit status lines in the help, want at least %d", n, len(commands)+7)
	}
}

func TestParseISCSIURL(t *testing.T) {
	for in, want := range map[string]iscsiURL{
		"iscsi://10.0.0.1/iqn.2001-04.com.example:disk1/2":         {portal: "10.0.0.1:3260", target: "iqn.2001-04.com.example:disk1", lun: 2},
		"iscsi://host.example:3261/iqn.2001-04.com.example:d":      {portal: "host.example:3261", target: "iqn.2001-04.com.example:d", lun: -1},
		"iscsi://[::1]:3262/iqn.2001-04.com.example:d/0":           {portal: "[::1]:3262", target: "iqn.2001-04.com.example:d", lun: 0},
		"iscsi://alice@10.0.0.1/iqn.2001-04.com.example:d/1":       {user: "alice", portal: "10.0.0.1:3260", target: "iqn.2001-04.com.example:d", lun: 1},
		"iscsi://alice%s3cr%et@10.0.0.1/iqn.2001-04.com.example:d": {user: "alice", secret: "s3cr%et", hasSecret: true, portal: "10.0.0.1:3260", target: "iqn.2001-04.com.example:d", lun: -1},
		"ISCSI://10.0.0.1":  {portal: "10.0.0.1:3260", lun: -1},
		"iscsi://10.0.0.1/": {portal: "10.0.0.1:3260", lun: -1},
	} {
		got, err := parseISCSIURL(in)
		if err != nil || got != want {
			t.Errorf("parseISCSIURL(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"http://10.0.0.1/x", "iscsi://", "iscsi:///iqn.2001-04.com.example:d", "iscsi://h/iqn.2001-04.com.example:d/lun0",
		"iscsi://h/iqn.2001-04.com.example:d/70000", "iscsi://h:0/t", "iscsi://h:99999/t", "iscsi://@h/t", "iscsi://u%@h/t", "iscsi://h//1",
		"iscsi://h/t?iser"} {
		if _, err := parseISCSIURL(in); err == nil {
			t.Errorf("parseISCSIURL(%q): no error", in)
		}
	}
	if got := redactURL("iscsi://alice%hunter2@h/t"); strings.Contains(got, "hunter2") || !strings.Contains(got, "alice") {
		t.Errorf("redactURL: %q", got)
	}
}

// TestURL: a URL names the portal, the target and the LUN of every
// command; a secret in it is refused unless --allow-secret-in-url, and is
// never echoed; giving the target both ways is refused.
func TestURL(t *testing.T) {
	t.Parallel()
	tg := cliTestTarget(t, iscsitest.Config{})
	u := "iscsi://" + tg.Addr() + "/" + cliTarget
	v := iscsictl(t, "readcap", u+"/1", "-j").want(t, exitOK).json(t)
	if l := path(t, v, "luns").([]any); len(l) != 1 || path(t, l, 0, "lun") != 1.0 || path(t, l, 0, "bytes") != float64(8<<20) {
		t.Errorf("readcap of LUN 1 by URL: %v", v)
	}
	// As --portal's value, and with the LUN given once more, the same.
	v = iscsictl(t, "readcap", "--portal", u+"/0", "--lun", "0", "-j").want(t, exitOK).json(t)
	if l := path(t, v, "luns").([]any); len(l) != 1 || path(t, l, 0, "bytes") != float64(4<<20) {
		t.Errorf("readcap of LUN 0 by --portal URL: %v", v)
	}
	v = iscsictl(t, "discover", "iscsi://"+tg.Addr(), "-j").want(t, exitOK).json(t)
	if path(t, v, "targets", 0, "name") != cliTarget {
		t.Errorf("discover by URL: %v", v)
	}
	iscsictl(t, "write", u+"/1", "--lba", "3", "--blocks", "2", "--fill", "171", "--verify").want(t, exitOK)
	r := iscsictl(t, "read", u+"/1", "--lba", "3", "--blocks", "1").want(t, exitOK)
	if !strings.Contains(r.stdout, "ab ab ab ab") {
		t.Errorf("read by URL:\n%.200s", r.stdout)
	}

	oneLine(t, iscsictl(t, "readcap", u+"/1", "--lun", "0"), "the LUN is given twice")
	oneLine(t, iscsictl(t, "readcap", u, "--target", "iqn.2001-04.com.example:other"), "the target is given twice")
	oneLine(t, iscsictl(t, "readcap", u, "--portal", tg.Addr()), "the portal is given twice")
	oneLine(t, iscsictl(t, "discover", u), "names a target")
	r = iscsictl(t, "readcap", "iscsi://alice%hunter2@"+tg.Addr()+"/"+cliTarget)
	oneLine(t, r, "--allow-secret-in-url")
	if strings.Contains(r.stderr, "hunter2") {
		t.Errorf("the secret is echoed: %q", r.stderr)
	}
	// Allowed, the secret is used: this target wants no CHAP, and the
	// login offering CHAP is refused; the secret is not in the message.
	r = iscsictl(t, "readcap", "--allow-secret-in-url", "iscsi://alice%hunter2hunter2@"+tg.Addr()+"/"+cliTarget).want(t, exitError)
	if strings.Contains(r.stderr, "hunter2") || strings.Contains(r.stderr, "--allow-secret-in-url") {
		t.Errorf("with --allow-secret-in-url: %q", r.stderr)
	}
}

// TestInitiatorNameDefault: without --initiator-name the name is derived
// once from /etc/machine-id and kept in the state directory; a kept name
// wins; open-iscsi's file wins over both.
func TestInitiatorNameDefault(t *testing.T) {
	dir := t.TempDir()
	mid := filepath.Join(dir, "machine-id")
	os.WriteFile(mid, []byte("0123456789abcdef0123456789abcdef\n"), 0o444)
	state := filepath.Join(dir, "state")
	n1, err := hostInitiatorNameFrom(filepath.Join(dir, "no-etc"), mid, state)
	if err != nil || !regexp.MustCompile(`^iqn\.2026-01\.org\.goiscsi:[0-9a-f]{12}$`).MatchString(n1) {
		t.Fatalf("derived name %q, %v", n1, err)
	}
	if strings.Contains(n1, "0123456789ab") {
		t.Errorf("the name %q shows the machine id", n1)
	}
	kept, err := os.ReadFile(filepath.Join(state, initiatorNameFile))
	if err != nil || string(kept) != "InitiatorName="+n1+"\n" {
		t.Errorf("kept %q, %v", kept, err)
	}
	// Another machine id, another name.
	mid2 := filepath.Join(dir, "machine-id-2")
	os.WriteFile(mid2, []byte("fedcba9876543210fedcba9876543210\n"), 0o444)
	if n2, _ := hostInitiatorNameFrom(filepath.Join(dir, "no-etc"), mid2, filepath.Join(dir, "state2")); n2 == n1 || n2 == "" {
		t.Errorf("two machine ids, names %q and %q", n1, n2)
	}
	// The kept name stays when the machine id changes (a cloned image).
	if n, _ := hostInitiatorNameFrom(filepath.Join(dir, "no-etc"), mid2, state); n != n1 {
		t.Errorf("kept name %q, got %q", n1, n)
	}
	etc := filepath.Join(dir, "initiatorname.iscsi")
	os.WriteFile(etc, []byte("## generated\n# InitiatorName=iqn.2000-01.com.example:commented\nInitiatorName=iqn.1993-08.org.debian:01:abcdef\n"), 0o644)
	if n, err := hostInitiatorNameFrom(etc, mid, state); err != nil || n != "iqn.1993-08.org.debian:01:abcdef" {
		t.Errorf("open-iscsi's name: %q, %v", n, err)
	}
	os.WriteFile(etc, []byte("InitiatorName=not-a-name\n"), 0o644)
	if _, err := hostInitiatorNameFrom(etc, mid, state); err == nil || !strings.Contains(err.Error(), "not-a-name") {
		t.Errorf("a malformed name: %v", err)
	}
}

// TestInitiatorNameBinary: the binary logs in as the host's name, kept
// in $XDG_STATE_HOME/iscsictl, the same on every run.
func TestInitiatorNameBinary(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat(etcInitiatorName); err == nil {
		t.Skip(etcInitiatorName + " exists: the name is open-iscsi's")
	}
	tg := cliTestTarget(t, iscsitest.Config{})
	state := t.TempDir()
	o := runOpts{env: []string{"XDG_STATE_HOME=" + state}}
	v := iscsictlWith(t, o, "login", "iscsi://"+tg.Addr()+"/"+cliTarget, "-j", "--log-level", "info").want(t, exitOK).json(t)
	_ = v
	kept, err := os.ReadFile(filepath.Join(state, "iscsictl", initiatorNameFile))
	if err != nil {
		t.Fatal(err)
	}
	name := strings.TrimSpace(strings.TrimPrefix(string(kept), "InitiatorName="))
	if name == "iqn.2026-01.org.goiscsi:iscsictl" || !strings.HasPrefix(name, derivedNamePrefix) {
		t.Errorf("kept name %q", name)
	}
	want, _ := hostInitiatorNameFrom(etcInitiatorName, machineIDFile, t.TempDir())
	if name != want {
		t.Errorf("the binary's name %q, derived here %q", name, want)
	}
}

// TestDigestRequired: --header-digest=required against a target that
// takes only None fails the login with a message saying so; offered, the
// login goes on without digests; against a target that takes CRC32C,
// required logs in with it.
func TestDigestRequired(t *testing.T) {
	t.Parallel()
	none := cliTestTarget(t, iscsitest.Config{HeaderDigests: []string{"None"}, DataDigests: []string{"None"}})
	u := "iscsi://" + none.Addr() + "/" + cliTarget
	r := iscsictl(t, "login", u, "--header-digest=required").want(t, exitError)
	if !strings.Contains(r.stderr, "would not use CRC32C header digests") {
		t.Errorf("stderr %q", r.stderr)
	}
	r = iscsictl(t, "login", u, "--data-digest=required").want(t, exitError)
	if !strings.Contains(r.stderr, "would not use CRC32C data digests") {
		t.Errorf("stderr %q", r.stderr)
	}
	v := iscsictl(t, "login", u, "--header-digest", "-j").want(t, exitOK).json(t)
	if path(t, v, "sessions", 0, "params", "HeaderDigest") != "None" {
		t.Errorf("offered: %v", path(t, v, "sessions", 0, "params"))
	}
	crc := cliTestTarget(t, iscsitest.Config{})
	v = iscsictl(t, "login", "iscsi://"+crc.Addr()+"/"+cliTarget, "--header-digest=required", "--data-digest=required", "-j").want(t, exitOK).json(t)
	if path(t, v, "sessions", 0, "params", "HeaderDigest") != "CRC32C" || path(t, v, "sessions", 0, "params", "DataDigest") != "CRC32C" {
		t.Errorf("required: %v", path(t, v, "sessions", 0, "params"))
	}
}

// TestDecodeAnyPort: what --pcap records of a target on any port, decode
// reads without --port (it finds the login); --pcap-snaplen keeps the
// headers only, and decode still finds the PDUs.
func TestDecodeAnyPort(t *testing.T) {
	t.Parallel()
	tg := cliTestTarget(t, iscsitest.Config{})
	dir := t.TempDir()
	full, snap := filepath.Join(dir, "full.pcap"), filepath.Join(dir, "snap.pcap")
	u := "iscsi://" + tg.Addr() + "/" + cliTarget + "/0"
	iscsictl(t, "read", u, "--lba", "0", "--blocks", "64", "--out", os.DevNull, "--pcap", full).want(t, exitOK)
	iscsictl(t, "read", u, "--lba", "0", "--blocks", "64", "--out", os.DevNull, "--pcap", snap, "--pcap-snaplen", "200").want(t, exitOK)
	names := func(v map[string]any) map[string]int {
		m := map[string]int{}
		for _, p := range path(t, v, "pdus").([]any) {
			m[p.(map[string]any)["name"].(string)]++
		}
		return m
	}
	v := iscsictl(t, "decode", full, "-j").want(t, exitOK).json(t)
	n := names(v)
	if n["Login Request"] == 0 || n["SCSI Command"] == 0 || n["Logout Response"] == 0 {
		t.Errorf("decode without --port: %v", n)
	}
	if fs, ss := fileSize(t, full), fileSize(t, snap); ss*2 > fs {
		t.Errorf("snap length 200: %d bytes, the whole capture %d", ss, fs)
	}
	v = iscsictl(t, "decode", snap, "-j").json(t)
	if s := names(v); s["Login Request"] == 0 || s["SCSI Command"] != n["SCSI Command"] {
		t.Errorf("decode of the cut capture: %v, whole: %v", s, n)
	}
	oneLine(t, iscsictl(t, "read", u, "--blocks", "1", "--pcap-snaplen", "200"), "--pcap-snaplen is for --pcap")
	oneLine(t, iscsictl(t, "read", u, "--blocks", "1", "--pcap", full, "--pcap-snaplen", "20"), "--pcap-snaplen 20")
}

func fileSize(t *testing.T, p string) int64 {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// TestRecoveryFlags: --erl and --time2retain are what the login offers
// (the target's answer decides: minimum for both), and out-of-range values
// are refused in one line.
func TestRecoveryFlags(t *testing.T) {
	t.Parallel()
	tg := cliTestTarget(t, iscsitest.Config{ErrorRecoveryLevel: 2})
	u := "iscsi://" + tg.Addr() + "/" + cliTarget
	for _, c := range []struct {
		args          []string
		erl, t2retain float64
	}{
		{nil, 2, 0},
		{[]string{"--time2retain", "20"}, 2, 20},
		{[]string{"--erl", "1", "--time2retain", "7"}, 1, 7},
		{[]string{"--erl", "0"}, 0, 0},
	} {
		v := iscsictl(t, append([]string{"login", u, "-c", "2", "-j"}, c.args...)...).want(t, exitOK).json(t)
		p := path(t, v, "sessions", 0, "params").(map[string]any)
		if p["ErrorRecoveryLevel"] != c.erl || p["DefaultTime2Retain"] != c.t2retain {
			t.Errorf("%v: ErrorRecoveryLevel %v, DefaultTime2Retain %v; want %v, %v", c.args, p["ErrorRecoveryLevel"],
				p["DefaultTime2Retain"], c.erl, c.t2retain)
		}
	}
	oneLine(t, iscsictl(t, "login", "-p", "127.0.0.1", "--erl", "3"), "--erl 3: ErrorRecoveryLevel is 0, 1 or 2")
	oneLine(t, iscsictl(t, "login", "-p", "127.0.0.1", "--time2retain", "3601"), "--time2retain 3601")
	oneLine(t, iscsictl(t, "node", "add", "-p", "127.0.0.1", "-t", cliTarget, "--erl", "-1", "--state-dir", t.TempDir()), "errorRecoveryLevel -1")
}
