package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/goiscsi/iscsi/iscsitest"
	"github.com/goiscsi/iscsi/pdu"
	"github.com/goiscsi/iscsi/session"
)

func TestSenseWords(t *testing.T) {
	fixed := func(key, asc, ascq byte) []byte {
		return []byte{0x70, 0, key, 0, 0, 0, 0, 10, 0, 0, 0, 0, asc, ascq, 0, 0, 0, 0}
	}
	for _, c := range []struct {
		sense []byte
		want  string
	}{
		{fixed(5, 0x21, 0), "ILLEGAL REQUEST: LOGICAL BLOCK ADDRESS OUT OF RANGE"},
		{fixed(6, 0x29, 0), "UNIT ATTENTION: POWER ON, RESET, OR BUS DEVICE RESET OCCURRED"},
		{fixed(2, 0x04, 0x0b), "NOT READY: LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN STANDBY STATE"},
		{fixed(3, 0x11, 0), "MEDIUM ERROR: UNRECOVERED READ ERROR"},
		{fixed(7, 0x27, 0), "DATA PROTECT: WRITE PROTECTED"},
		{fixed(5, 0x55, 0x55), "ILLEGAL REQUEST: ASC/ASCQ 55/55"},
		{fixed(5, 0x80, 0x01), "ILLEGAL REQUEST: vendor specific ASC/ASCQ 80/01"},
		{[]byte{0x72, 0x0b, 0x47, 0x01, 0, 0, 0, 0}, "ABORTED COMMAND: DATA PHASE CRC ERROR DETECTED"},
		{[]byte{0x70, 0, 0x0e}, "MISCOMPARE"},
		{nil, ""},
	} {
		if got := senseWords(&session.SCSIError{Status: 2, Sense: c.sense}); got != c.want {
			t.Errorf("senseWords(% x) = %q, want %q", c.sense, got, c.want)
		}
	}
	_, msg := describe(&stepError{step: "READ", err: &session.SCSIError{Status: 2, Sense: fixed(5, 0x21, 0)}})
	if want := "SCSI command failed (READ): SCSI status 0x02, sense key 0x5, ASC/ASCQ 21/00 (ILLEGAL REQUEST: LOGICAL BLOCK ADDRESS OUT OF RANGE)"; msg != want {
		t.Errorf("describe: %q, want %q", msg, want)
	}
}

func TestAuthHint(t *testing.T) {
	for _, c := range []struct {
		step *stepError
		want string
	}{
		{&stepError{chap: false}, "the target requires CHAP; give the secret with --chap-secret-file or $ISCSI_CHAP_SECRET"},
		{&stepError{chap: true, chapUser: "iqn.2026-01.org.goiscsi:abc", initiatorName: "iqn.2026-01.org.goiscsi:abc"},
			"the CHAP user name was the initiator name iqn.2026-01.org.goiscsi:abc (the default); if the target knows another user name, give it with --chap-user"},
		{&stepError{chap: true, chapUser: "alice", initiatorName: "iqn.2026-01.org.goiscsi:abc"}, "check the CHAP user name and secret"},
	} {
		c.step.step, c.step.err = "logging in", &session.LoginError{Status: pdu.LoginAuthFailed}
		if _, msg := describe(c.step); !strings.Contains(msg, "authentication failed (0x0201)") || !strings.Contains(msg, c.want) {
			t.Errorf("%+v: %q, want %q", c.step, msg, c.want)
		}
	}
}

// checkCondition answers SCSI commands with operation code op with CHECK
// CONDITION and fixed-format sense key/ASC/ASCQ.
func checkCondition(op, key, asc, ascq byte) iscsitest.Hook {
	return func(ev *iscsitest.Event) iscsitest.Action {
		if p, ok := ev.PDU.(*pdu.SCSICommand); ok && p.CDB[0] == op {
			sense := []byte{0, 18, 0x70, 0, key, 0, 0, 0, 0, 10, 0, 0, 0, 0, asc, ascq, 0, 0, 0, 0}
			return iscsitest.Respond(&pdu.SCSIResponse{Status: 2, ITT: p.ITT}, sense)
		}
		return iscsitest.Continue
	}
}

// TestSCSIErrorsInWords: a SCSI error of the target is printed with its
// sense in words; readcap on a target with no disk LUN says so and exits
// 1; a login refused for CHAP says what to give.
func TestSCSIErrorsInWords(t *testing.T) {
	t.Parallel()
	bad := cliTestTarget(t, iscsitest.Config{Hook: checkCondition(0x88, 5, 0x21, 0)})
	r := iscsictl(t, "read", "iscsi://"+bad.Addr()+"/"+cliTarget+"/0", "--lba", "0", "--blocks", "1").want(t, exitError)
	if !strings.Contains(r.stderr, "ASC/ASCQ 21/00 (ILLEGAL REQUEST: LOGICAL BLOCK ADDRESS OUT OF RANGE)") {
		t.Errorf("stderr %q", r.stderr)
	}

	nodisk := cliTestTarget(t, iscsitest.Config{Hook: checkCondition(0x9e, 5, 0x20, 0)})
	r = iscsictl(t, "readcap", "iscsi://"+nodisk.Addr()+"/"+cliTarget).want(t, exitError)
	if !strings.Contains(r.stderr, "has no disk LUN") {
		t.Errorf("readcap without a disk: %q", r.stderr)
	}

	chap := cliTestTarget(t, iscsitest.Config{CHAP: &iscsitest.CHAP{User: "alice", Secret: "0123456789abcdef"}})
	r = iscsictl(t, "login", "iscsi://"+chap.Addr()+"/"+cliTarget).want(t, exitError)
	if !strings.Contains(r.stderr, "the target requires CHAP") {
		t.Errorf("login without CHAP: %q", r.stderr)
	}
	secret := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secret, []byte("0123456789abcdef\n"), 0o600)
	r = iscsictl(t, "login", "iscsi://"+chap.Addr()+"/"+cliTarget, "--chap-secret-file", secret, "--initiator-name", "iqn.2026-01.org.goiscsi:hint").want(t, exitError)
	if !strings.Contains(r.stderr, "was the initiator name iqn.2026-01.org.goiscsi:hint (the default)") {
		t.Errorf("login with the default user name: %q", r.stderr)
	}
	iscsictl(t, "login", "iscsi://alice@"+chap.Addr()+"/"+cliTarget, "--chap-secret-file", secret).want(t, exitOK)
}

// TestBeyond64MiB: read and write of more than 64 MiB are split into
// commands; what is read back is what was written.
func TestBeyond64MiB(t *testing.T) {
	t.Parallel()
	tg := cliTestTarget(t, iscsitest.Config{LUNs: []int64{80 << 20}})
	u := "iscsi://" + tg.Addr() + "/" + cliTarget + "/0"
	blocks := (65 << 20) / iscsitest.BlockSize
	in := filepath.Join(t.TempDir(), "in")
	data := make([]byte, 65<<20)
	for i := range data {
		data[i] = byte(i / 4099)
	}
	os.WriteFile(in, data, 0o600)
	w := iscsictl(t, "write", u, "--lba", "16", "--in", in, "-j").want(t, exitOK).json(t)
	if path(t, w, "blocks") != float64(blocks) || path(t, w, "commands").(float64) < 17 {
		t.Errorf("write: %v", w)
	}
	out := filepath.Join(t.TempDir(), "out")
	r := iscsictl(t, "read", u, "--lba", "16", "--blocks", "133120", "--out", out, "-j").want(t, exitOK).json(t)
	if path(t, r, "sha256") != path(t, w, "sha256") || path(t, r, "commands").(float64) < 17 || path(t, r, "bytes") != float64(65<<20) {
		t.Errorf("read: %v, write: %v", r, w)
	}
	if got, _ := os.ReadFile(out); firstDiff(got, data) >= 0 {
		t.Errorf("the file read differs from the one written at byte %d", firstDiff(got, data))
	}
}

// TestFewerConnectionsCLI: --conns beyond the target's MaxConnections logs
// in with what it allows and says so, where it used to fail.
func TestFewerConnectionsCLI(t *testing.T) {
	t.Parallel()
	tg := cliTestTarget(t, iscsitest.Config{MaxConnections: 1})
	r := iscsictl(t, "login", "iscsi://"+tg.Addr()+"/"+cliTarget, "--sessions", "2", "--conns", "2", "-j").want(t, exitOK)
	v := r.json(t)
	if path(t, v, "connectionsAllowed") != 1.0 || len(path(t, v, "sessions", 0, "connections").([]any)) != 1 ||
		len(path(t, v, "sessions", 1, "connections").([]any)) != 1 || path(t, v, "logout", "outcome") != "success" {
		t.Errorf("login --conns 2 where 1 is allowed: %v", v)
	}
	if strings.Count(r.stderr, "allows 1 connection(s) per session") != 1 {
		t.Errorf("stderr %q", r.stderr)
	}
}
