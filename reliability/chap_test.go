package reliability

// CHAP hygiene: secrets never in logs, errors, --json output or pcaps
// (beyond the CHAP_R digest); a reflected challenge and a wrong mutual
// secret refused. The CHAP rows of docs/RELIABILITY.md are here too.

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/goiscsi/iscsi/initiator"
	"github.com/goiscsi/iscsi/internal/faketarget"
	"github.com/goiscsi/iscsi/iscsitest"
	"github.com/goiscsi/iscsi/logout"
	"github.com/goiscsi/iscsi/pdu"
	"github.com/goiscsi/iscsi/session"
)

const (
	chapUser      = "reliability-user"
	chapSecret    = "s3cret-initiator-Xq9"
	chapTgtUser   = "reliability-target"
	chapTgtSecret = "s3cret-target-Kp4w"
)

// secretForms are the ways a secret could leak: as is, in hex (CHAP's
// binary encoding), in base64.
func secretForms(secret string) []string {
	return []string{secret, hex.EncodeToString([]byte(secret)), strings.ToUpper(hex.EncodeToString([]byte(secret))),
		base64.StdEncoding.EncodeToString([]byte(secret)), strings.TrimRight(base64.StdEncoding.EncodeToString([]byte(secret)), "=")}
}

// noSecret fails if any form of either secret is in b.
func noSecret(t *testing.T, where string, b []byte) {
	t.Helper()
	for _, s := range []string{chapSecret, chapTgtSecret} {
		for _, f := range secretForms(s) {
			if bytes.Contains(b, []byte(f)) {
				t.Errorf("%s holds a CHAP secret (as %q)", where, f)
			}
		}
	}
}

// syncBuffer is a bytes.Buffer for a zap core written from many goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) Sync() error { return nil }
func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

func chapTarget(t *testing.T, mutualSecret string, algs []int) *iscsitest.Target {
	tg := iscsitest.NewTarget(iscsitest.Config{Name: memIQN, CHAPAlgorithms: algs,
		CHAP: &iscsitest.CHAP{User: chapUser, Secret: chapSecret, MutualUser: chapTgtUser, MutualSecret: mutualSecret}})
	t.Cleanup(tg.Close)
	return tg
}

func chapConfig() *session.CHAP {
	return &session.CHAP{User: chapUser, Secret: chapSecret, TargetUser: chapTgtUser, TargetSecret: chapTgtSecret}
}

// A mutual CHAP login, I/O and logout with the initiator logging at debug
// level, in JSON and console form, with every algorithm; then logins that
// fail for each wrong secret. No log line and no error holds a secret.
func TestCHAPSecretNotInLogs(t *testing.T) {
	var buf syncBuffer
	enc := zap.NewDevelopmentEncoderConfig()
	core := zapcore.NewTee(
		zapcore.NewCore(zapcore.NewJSONEncoder(enc), &buf, zapcore.DebugLevel),
		zapcore.NewCore(zapcore.NewConsoleEncoder(enc), &buf, zapcore.DebugLevel))
	log := zap.New(core)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	for _, alg := range []int{session.CHAPMD5, session.CHAPSHA1, session.CHAPSHA256, session.CHAPSHA3256} {
		tg := chapTarget(t, chapTgtSecret, []int{alg})
		in, err := initiator.New(initiator.Config{Name: initiatorIQN, Logger: log, NOPInterval: -1})
		if err != nil {
			t.Fatal(err)
		}
		s, err := in.Login(ctx, tg.Addr(), memIQN, initiator.LoginOptions{CHAP: chapConfig(), Connections: 2})
		if err != nil {
			t.Fatalf("CHAP_A=%d: %v", alg, err)
		}
		if err := s.Write(ctx, 0, 0, 512, make([]byte, 4096)); err != nil {
			t.Fatal(err)
		}
		op, _ := in.LogoutFromTarget(memIQN)
		if r, err := op.Wait(ctx); err != nil || r.Outcome != logout.Success {
			t.Fatalf("logout: %v %v", r.Outcome, err)
		}
		in.Close()
	}
	// Failures: wrong initiator secret, wrong target secret, both sent to
	// the logger through the initiator and returned.
	for _, tt := range []struct {
		name string
		chap *session.CHAP
		tsec string
	}{
		{"wrong initiator secret", &session.CHAP{User: chapUser, Secret: chapSecret + "-no", TargetUser: chapTgtUser, TargetSecret: chapTgtSecret}, chapTgtSecret},
		{"wrong target secret", chapConfig(), chapTgtSecret + "-no"},
	} {
		tg := chapTarget(t, tt.tsec, nil)
		in, err := initiator.New(initiator.Config{Name: initiatorIQN, Logger: log, NOPInterval: -1})
		if err != nil {
			t.Fatal(err)
		}
		_, err = in.Login(ctx, tg.Addr(), memIQN, initiator.LoginOptions{CHAP: tt.chap})
		if err == nil {
			t.Fatalf("%s: login succeeded", tt.name)
		}
		log.Debug("login failed", zap.Error(err))
		noSecret(t, tt.name+": error", []byte(fmt.Sprintf("%v %+v %#v", err, err, err)))
		in.Close()
	}
	out := buf.Bytes()
	if !bytes.Contains(out, []byte("connection logged in")) {
		t.Fatalf("no debug lines captured:\n%s", out)
	}
	noSecret(t, "the debug log", out)
}

// Every CHAP misconfiguration error names the problem without the secret.
func TestCHAPSecretNotInErrors(t *testing.T) {
	cfgs := []*session.CHAP{
		{User: chapUser, Secret: "Qz8#k2"},
		{User: chapUser, Secret: chapSecret, TargetSecret: chapSecret},
		{User: chapUser, Secret: chapSecret, TargetSecret: "Wx5%p"},
		{User: chapUser, Secret: chapSecret, Algorithms: []int{99}},
	}
	for _, c := range cfgs {
		cfg := testConfig()
		cfg.CHAP = c
		_, err := session.Login(context.Background(), cfg)
		if err == nil {
			t.Fatalf("%+v accepted", c)
		}
		for _, f := range append(secretForms(c.Secret), secretForms(c.TargetSecret)...) {
			if f != "" && strings.Contains(fmt.Sprintf("%v %+v %#v", err, err, err), f) {
				t.Errorf("error %q holds the secret", err)
			}
		}
	}
}

// iscsictl login with mutual CHAP, --json, debug logs in JSON and a pcap:
// no secret on stdout, on stderr or in the pcap, which does carry the
// CHAP_R digests. A wrong secret fails with a clear error, secret-free.
func TestCHAPSecretNotInCLI(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command to build iscsictl")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "iscsictl")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/goiscsi/iscsi/cmd/iscsictl")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build iscsictl: %v\n%s", err, out)
	}
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	secret, tsecret := write("secret", chapSecret), write("tsecret", chapTgtSecret)
	wrong := write("wrong", chapSecret+"-no")
	tg := chapTarget(t, chapTgtSecret, []int{5, 7})
	run := func(secretFile string, extra ...string) (stdout, stderr []byte, code int) {
		pcap := filepath.Join(dir, fmt.Sprintf("run%d.pcap", time.Now().UnixNano()))
		args := append([]string{"login", "--portal", tg.Addr(), "--target", memIQN, "--initiator-name", initiatorIQN,
			"--chap-user", chapUser, "--chap-secret-file", secretFile, "--chap-target-user", chapTgtUser,
			"--chap-target-secret-file", tsecret, "--json", "--log-level", "debug", "--log-format", "json",
			"--login-timeout", "10s", "--pcap", pcap}, extra...)
		rctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(rctx, bin, args...)
		cmd.WaitDelay = 5 * time.Second
		var env []string
		for _, e := range os.Environ() {
			if !strings.HasPrefix(e, "ISCSI_CHAP") {
				env = append(env, e)
			}
		}
		cmd.Env = env
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		err := cmd.Run()
		var ee *exec.ExitError
		switch {
		case errors.As(err, &ee):
			code = ee.ExitCode()
		case err != nil:
			t.Fatalf("iscsictl: %v", err)
		}
		p, err := os.ReadFile(pcap)
		if err != nil {
			t.Fatalf("no pcap: %v\n%s", err, e.Bytes())
		}
		noSecret(t, "the pcap", p)
		if code == 0 && (!bytes.Contains(p, []byte("CHAP_R=0x")) || !bytes.Contains(p, []byte("CHAP_N="+chapUser))) {
			t.Error("the pcap holds no CHAP exchange")
		}
		return o.Bytes(), e.Bytes(), code
	}
	o, e, code := run(secret)
	if code != 0 || !bytes.HasPrefix(bytes.TrimSpace(o), []byte("{")) {
		t.Fatalf("login: exit %d\nstdout:\n%s\nstderr:\n%s", code, o, e)
	}
	noSecret(t, "--json stdout", o)
	noSecret(t, "stderr (debug log)", e)
	o, e, code = run(wrong)
	if code != 1 || !bytes.Contains(e, []byte("authentication failed")) {
		t.Fatalf("login with a wrong secret: exit %d, stderr:\n%s", code, e)
	}
	noSecret(t, "stdout of a failed login", o)
	noSecret(t, "stderr of a failed login", e)
}

// mutualCHAP runs the target's side of mutual CHAP with MD5; reflect, when
// set, is sent as the target's challenge instead of a fresh one. It records
// the challenge the initiator sends.
type mutualCHAP struct {
	mu      sync.Mutex
	reflect []byte
	sent    [][]byte // the initiator's challenges, in order
	// challenge, id and alg override CHAP_C, CHAP_I and CHAP_A, for the
	// hostile rows.
	challenge, id, alg string
}

func (m *mutualCHAP) security(f *faketarget.Target, req *pdu.LoginRequest, kvs []pdu.KV) (*pdu.LoginRequest, []pdu.KV, error) {
	if v, _ := pdu.Lookup(kvs, "AuthMethod"); v != "CHAP" {
		return nil, nil, fmt.Errorf("fake: AuthMethod %q", v)
	}
	if err := f.AnswerLogin(req, pdu.LoginResponse{TSIH: req.TSIH}, faketarget.Text("AuthMethod=CHAP")); err != nil {
		return nil, nil, err
	}
	req, _, err := f.ReadLogin()
	if err != nil {
		return nil, nil, err
	}
	m.mu.Lock()
	c := m.reflect
	ch, id, alg := m.challenge, m.id, m.alg
	m.mu.Unlock()
	if alg == "" {
		alg = "5"
	}
	if c == nil {
		c = bytes.Repeat([]byte{0x5a}, 16)
	}
	if ch == "" {
		ch = pdu.FormatHex(c)
	}
	if id == "" {
		id = "7"
	}
	if err := f.AnswerLogin(req, pdu.LoginResponse{TSIH: req.TSIH}, faketarget.Text("CHAP_A="+alg, "CHAP_I="+id, "CHAP_C="+ch)); err != nil {
		return nil, nil, err
	}
	req, kvs, err = f.ReadLogin()
	if err != nil {
		return nil, nil, err
	}
	ii, _ := pdu.Lookup(kvs, "CHAP_I")
	ic, _ := pdu.Lookup(kvs, "CHAP_C")
	ours, err := pdu.ParseBinary(ic, pdu.MaxBinaryValueLen)
	if err != nil {
		return nil, nil, fmt.Errorf("fake: initiator's CHAP_C: %v", err)
	}
	m.mu.Lock()
	m.sent = append(m.sent, ours)
	m.mu.Unlock()
	n, _ := strconv.Atoi(ii)
	h := md5.New()
	h.Write([]byte{byte(n)})
	h.Write([]byte(chapTgtSecret))
	h.Write(ours)
	if err := f.AnswerLogin(req, pdu.LoginResponse{Transit: true, NSG: pdu.StageOperational, TSIH: req.TSIH},
		faketarget.Text("CHAP_N="+chapTgtUser, "CHAP_R="+pdu.FormatHex(h.Sum(nil)))); err != nil {
		return nil, nil, err
	}
	return f.ReadLogin()
}

func chapFakeConfig() session.Config {
	cfg := testConfig()
	cfg.CHAP = chapConfig()
	cfg.CHAP.Algorithms = []int{session.CHAPMD5}
	return cfg
}

// A target that sends back, on a second connection of the session, the
// challenge the initiator sent on the first → the new connection is
// refused (*session.NegotiationError, CHAP_C); the first goes on.
func TestFaultCHAPReflectedChallenge(t *testing.T) {
	m := &mutualCHAP{}
	s, srv := fakeSessionServer(t, chapFakeConfig(), faketarget.Login{Security: m.security})
	m.mu.Lock()
	if len(m.sent) != 1 {
		t.Fatalf("%d initiator challenges, want 1", len(m.sent))
	}
	m.reflect = m.sent[0]
	m.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	_, err := s.AddConnection(ctx)
	ne := asNegotiationError(t, err, "reflection")
	if ne.Key != "CHAP_C" {
		t.Errorf("key %q, want CHAP_C", ne.Key)
	}
	f := srv.Targets()[0]
	ch := goExecute(ctx, s, readCmd(512))
	f.ReadData(f.Expect(pdu.OpSCSICommand), make([]byte, 512))
	if r := waitExec(t, ch); r.err != nil {
		t.Fatalf("I/O on the first connection: %v", r.err)
	}
}

// Mutual CHAP where the target proves a secret other than the one
// configured → the login fails with *session.NegotiationError (CHAP_R,
// "target failed mutual authentication").
func TestFaultCHAPMutualWrongTargetSecret(t *testing.T) {
	tg := chapTarget(t, chapTgtSecret+"-other", nil)
	cfg := testConfig()
	cfg.TargetName, cfg.Portal, cfg.CHAP = memIQN, tg.Addr(), chapConfig()
	_, err := session.Login(context.Background(), cfg)
	ne := asNegotiationError(t, err, "target failed mutual authentication")
	if ne.Key != "CHAP_R" {
		t.Errorf("key %q, want CHAP_R", ne.Key)
	}
	noSecret(t, "the error", []byte(err.Error()))
}

// Hostile CHAP challenges (CHAP_C over 1024 bytes or empty, CHAP_I 256, a
// CHAP_A not offered) → *session.NegotiationError naming the key.
func TestFaultCHAPHostileChallenge(t *testing.T) {
	for _, tt := range []struct {
		name, challenge, id, alg, key string
	}{
		{"CHAP_C over 1024 bytes", pdu.FormatHex(make([]byte, 1025)), "", "", "CHAP_C"},
		{"CHAP_C empty", "0x", "", "", "CHAP_C"},
		{"CHAP_I 256", "", "256", "", "CHAP_I"},
		{"CHAP_A not offered", "", "", "7", "CHAP_A"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := &mutualCHAP{challenge: tt.challenge, id: tt.id, alg: tt.alg}
			err := fakeLoginErr(t, chapFakeConfig(), func(f *faketarget.Target) error {
				req, kvs, err := f.ReadLogin()
				if err != nil {
					return err
				}
				m.security(f, req, kvs)
				return nil
			})
			// The key is the error's Key, or named by the text error
			// under it.
			asNegotiationError(t, err, tt.key)
		})
	}
}
