package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/agent/api"
	"github.com/goiscsi/iscsi/agent/metrics"
	"github.com/goiscsi/iscsi/agent/nodes"
	"github.com/goiscsi/iscsi/iscsitest"
	"github.com/goiscsi/iscsi/logout"
	"github.com/goiscsi/iscsi/pdu"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const initiatorName = "iqn.2026-01.org.goiscsi.test:agent"

// client talks to an agent on a Unix socket or a TCP address.
type client struct {
	t     *testing.T
	http  *http.Client
	base  string
	token string
}

func unixClient(t *testing.T, sock string) *client {
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}
	return &client{t: t, http: &http.Client{Transport: tr, Timeout: 30 * time.Second}, base: "http://agent"}
}

// do sends a request and decodes the JSON answer into out (when not nil);
// it returns the status.
func (c *client) do(method, path string, body, out any) int {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			c.t.Fatalf("%s %s: %d %v: %s", method, path, resp.StatusCode, err, b)
		}
	}
	return resp.StatusCode
}

// startAgent starts an agent with its state in dir on a Unix socket; the
// test shuts it down unless it does so itself.
func startAgent(t *testing.T, dir string) (*Agent, *client) {
	t.Helper()
	a, err := New(Config{InitiatorName: initiatorName, StateDir: filepath.Join(dir, "state"),
		ShutdownLogout: logoutOpts()})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "run", "iscsictl.sock")
	ln, err := ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Serve(ln, false, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Shutdown(nil) })
	return a, unixClient(t, sock)
}

func liveSessions(tg *iscsitest.Target) int {
	n := 0
	for _, s := range tg.Sessions() {
		if !s.Ended && !s.Discovery {
			n++
		}
	}
	return n
}

// TestAgentAPI drives the API against the in-memory target: logins that
// stay, the list, a session's logout and a target's, their second time
// (session not found, 404 with the VDS HRESULT), malformed requests, and
// the metrics they leave.
func TestAgentAPI(t *testing.T) {
	tg := iscsitest.NewTarget(iscsitest.Config{LUNs: []int64{1 << 20}})
	defer tg.Close()
	dir := t.TempDir()
	a, c := startAgent(t, dir)

	st, err := os.Stat(filepath.Join(dir, "run", "iscsictl.sock"))
	if err != nil || st.Mode().Perm() != 0o600 || st.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket: %v, %v; want a socket of mode 0600", st.Mode(), err)
	}

	var v api.VersionInfo
	if s := c.do("GET", "/v1/version", nil, &v); s != 200 || v.APIVersion != 1 || v.InitiatorName != initiatorName {
		t.Errorf("version: %d %+v", s, v)
	}

	// Two logins, one with the target left to discovery.
	var lr api.LoginResponse
	if s := c.do("POST", "/v1/sessions", api.LoginRequest{Portal: tg.Addr(), Target: iscsitest.DefaultName}, &lr); s != 201 ||
		len(lr.Sessions) != 1 || lr.Target != iscsitest.DefaultName {
		t.Fatalf("login: %d %+v", s, lr)
	}
	first := lr.Sessions[0]
	if s := c.do("POST", "/v1/sessions", api.LoginRequest{Portal: tg.Addr()}, &lr); s != 201 || len(lr.Sessions) != 1 {
		t.Fatalf("login with discovery: %d %+v", s, lr)
	}
	var ss api.Sessions
	if s := c.do("GET", "/v1/sessions", nil, &ss); s != 200 || len(ss.Sessions) != 2 {
		t.Fatalf("sessions: %d %+v", s, ss)
	}
	for _, s := range ss.Sessions {
		if s.State != "logged in" || s.Target != iscsitest.DefaultName || len(s.Connections) != 1 || s.Params["MaxBurstLength"] == nil ||
			s.LoggedInAt == "" {
			t.Errorf("session %+v", s)
		}
		if tcpInfoSupported && (!s.Counters.Measured || s.Counters.BytesReceived == 0 || s.Counters.BytesSent == 0) {
			t.Errorf("session counters %+v: the login's bytes are not counted", s.Counters)
		}
	}
	if n := liveSessions(tg); n != 2 {
		t.Fatalf("the target has %d sessions, want 2", n)
	}

	// One session's logout, then the same again.
	var lo api.LogoutResponse
	path := "/v1/sessions/" + strings.TrimSpace(jsonNum(first.TSIH)) + "?timeoutMs=5000"
	if s := c.do("DELETE", path, nil, &lo); s != 200 || lo.Logout.Outcome != "success" || lo.Logout.LoggedOut != 1 ||
		uint16(lo.Logout.Sessions[0].TSIH) != first.TSIH || lo.Error != nil {
		t.Fatalf("session logout: %d %+v", s, lo)
	}
	if s := c.do("GET", "/v1/sessions", nil, &ss); s != 200 || len(ss.Sessions) != 1 || ss.Sessions[0].TSIH == first.TSIH {
		t.Fatalf("sessions after one logout: %+v", ss)
	}
	lo = api.LogoutResponse{}
	if s := c.do("DELETE", path, nil, &lo); s != 404 || lo.Logout.Outcome != "session not found" || lo.Error == nil ||
		lo.Error.HRESULT != "0x8004270A" || lo.Error.ExitCode != 2 {
		t.Fatalf("second session logout: %d %+v", s, lo)
	}

	// The target's logout, then the same again.
	lo = api.LogoutResponse{}
	tpath := "/v1/targets/" + iscsitest.DefaultName + "/logout"
	var raw json.RawMessage
	status := c.do("POST", tpath, api.LogoutRequest{TimeoutMs: 5000}, &raw)
	if err := json.Unmarshal(raw, &lo); err != nil {
		t.Fatalf("target logout: %v: %s", err, raw)
	}
	if status != 200 || lo.Logout.Outcome != "success" ||
		lo.Logout.HRESULT != "0x00000000" || lo.Logout.LoggedOut != 1 || lo.Logout.ExitCode != 0 {
		t.Fatalf("target logout: %d %+v", status, lo)
	}
	// The answer is iscsictl logout --json's result: identifiers as 0x
	// strings, the deadline, the counts, each connection's ladder steps.
	var wire struct {
		Logout struct {
			SessionCount int     `json:"sessionCount"`
			DeadlineMs   float64 `json:"deadlineMs"`
			Commands     *struct {
				Total int `json:"total"`
			} `json:"commands"`
			Sessions []struct {
				TSIH  string `json:"tsih"`
				ISID  string `json:"isid"`
				Conns []struct {
					CID   string `json:"cid"`
					Steps []struct {
						Kind  string `json:"kind"`
						State string `json:"state"`
					} `json:"steps"`
				} `json:"connections"`
			} `json:"sessions"`
		} `json:"logout"`
	}
	if err := json.Unmarshal(raw, &wire); err != nil {
		t.Fatalf("target logout: %v: %s", err, raw)
	}
	if w := wire.Logout; w.SessionCount != 1 || w.DeadlineMs <= 0 || w.Commands == nil || len(w.Sessions) != 1 ||
		!strings.HasPrefix(w.Sessions[0].TSIH, "0x") || len(w.Sessions[0].TSIH) != 6 || len(w.Sessions[0].ISID) != 14 ||
		len(w.Sessions[0].Conns) != 1 || w.Sessions[0].Conns[0].CID != "0x0000" || len(w.Sessions[0].Conns[0].Steps) != 1 ||
		w.Sessions[0].Conns[0].Steps[0].Kind != "logout" || w.Sessions[0].Conns[0].Steps[0].State != "logged out" {
		t.Fatalf("target logout's JSON is not the documented shape: %s", raw)
	}
	if n := liveSessions(tg); n != 0 {
		t.Errorf("the target still has %d sessions", n)
	}
	lo = api.LogoutResponse{}
	if s := c.do("POST", tpath, nil, &lo); s != 404 || lo.Logout.Outcome != "session not found" || lo.Logout.ExitCode != 2 ||
		lo.Error.HRESULT != "0x8004270A" {
		t.Fatalf("second target logout: %d %+v", s, lo)
	}
	// The result decodes back to what was encoded.
	r, _, err := lo.Logout.Result()
	if err != nil || r.Outcome.String() != "session not found" {
		t.Errorf("Result(): %+v, %v", r, err)
	}

	// Malformed requests: 400 with exit status 5; a refused login: 502
	// with the target's status.
	var e api.ErrorResponse
	for _, bad := range []struct {
		method, path string
		body         any
	}{
		{"POST", "/v1/sessions", api.LoginRequest{Portal: tg.Addr(), Target: "not-a-name"}},
		{"POST", "/v1/sessions", map[string]any{"portal": tg.Addr(), "bogus": 1}},
		{"POST", "/v1/sessions", api.LoginRequest{Portal: tg.Addr(), Connections: -1}},
		{"DELETE", "/v1/sessions/0", nil},
		{"DELETE", "/v1/sessions/1?timeoutMs=soon", nil},
		{"POST", "/v1/targets/not-a-name/logout", nil},
		{"POST", tpath, api.LogoutRequest{Strategy: "all-at-once"}},
	} {
		e = api.ErrorResponse{}
		if s := c.do(bad.method, bad.path, bad.body, &e); s != 400 || e.Error.ExitCode != 5 || e.Error.Kind != api.KindInvalid || e.Error.Message == "" {
			t.Errorf("%s %s %v: %d %+v", bad.method, bad.path, bad.body, s, e)
		}
	}
	e = api.ErrorResponse{}
	if s := c.do("POST", "/v1/sessions", api.LoginRequest{Portal: tg.Addr(), Target: "iqn.2026-01.org.goiscsi.test:absent"}, &e); s != 502 ||
		e.Error.LoginStatus == nil || *e.Error.LoginStatus != 0x0203 || e.Error.ExitCode != 1 || e.Error.Step != "logging in" {
		t.Errorf("login to an absent target: %d %+v", s, e)
	}
	e = api.ErrorResponse{}
	if s := c.do("GET", "/v2/sessions", nil, &e); s != 404 || e.Error.Kind != api.KindNotFound {
		t.Errorf("unknown path: %d %+v", s, e)
	}

	// What the metrics counted.
	m := a.Metrics()
	if got := metricValue(t, m, "iscsictl_logins_total", "ok"); got != 2 {
		t.Errorf("logins ok = %v, want 2", got)
	}
	if got := metricValue(t, m, "iscsictl_logins_total", "failed"); got != 1 {
		t.Errorf("logins failed = %v, want 1", got)
	}
	if got := metricValue(t, m, "iscsictl_logouts_total", "0x00000000", "success", "target"); got != 1 {
		t.Errorf("target logouts = %v, want 1", got)
	}
	if got := metricValue(t, m, "iscsictl_logouts_total", "0x8004270A", "session not found", "session"); got != 1 {
		t.Errorf("session logouts not found = %v, want 1", got)
	}
	if n, err := testutil.GatherAndCount(m.Registry(), "iscsictl_login_duration_seconds", "iscsictl_sessions", "iscsictl_reconnects_total"); err != nil || n != 1+len(statesOf())+1 {
		t.Errorf("gathered %d series, %v", n, err)
	}
}

// metricValue returns the value of the counter or gauge name whose label
// values are values, in label order.
func metricValue(t *testing.T, m *metrics.Metrics, name string, values ...string) float64 {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, x := range mf.GetMetric() {
			lp := x.GetLabel()
			if len(lp) != len(values) {
				continue
			}
			// Labels come sorted by name (hresult, outcome, scope); the
			// callers give them so.
			for i, l := range lp {
				if l.GetValue() != values[i] {
					continue next
				}
			}
			if g := x.GetGauge(); g != nil {
				return g.GetValue()
			}
			return x.GetCounter().GetValue()
		}
	}
	return 0
}

func statesOf() []string { return []string{"logged in", "logging out", "recovering", "failed", "lost"} }

func jsonNum(v uint16) string { b, _ := json.Marshal(v); return string(b) }

func logoutOpts() (o logout.Options) {
	o.Timeout = 5 * time.Second
	return o
}

// TestAgentNodes: node records through the API, kept across an agent's
// restart, and the automatic one logged in to at start; Shutdown logs out
// of it.
func TestAgentNodes(t *testing.T) {
	tg := iscsitest.NewTarget(iscsitest.Config{LUNs: []int64{1 << 20}})
	defer tg.Close()
	dir := t.TempDir()
	a, c := startAgent(t, dir)

	var nr api.NodeResponse
	node := nodes.Node{Target: iscsitest.DefaultName, Portals: []string{tg.Addr()}, Startup: nodes.Automatic}
	if s := c.do("POST", "/v1/nodes", node, &nr); s != 201 || !nr.Created || nr.Node.Target != iscsitest.DefaultName {
		t.Fatalf("POST node: %d %+v", s, nr)
	}
	other := nodes.Node{Portals: []string{"127.0.0.2"}, Startup: nodes.Manual}
	if s := c.do("PUT", "/v1/nodes/iqn.2026-01.org.goiscsi.test:manual", other, &nr); s != 201 || nr.Node.Portals[0] != "127.0.0.2:3260" {
		t.Fatalf("PUT node: %d %+v", s, nr)
	}
	nr = api.NodeResponse{}
	if s := c.do("PUT", "/v1/nodes/iqn.2026-01.org.goiscsi.test:manual", other, &nr); s != 200 || nr.Created {
		t.Fatalf("PUT again: %d %+v", s, nr)
	}
	var e api.ErrorResponse
	if s := c.do("POST", "/v1/nodes", nodes.Node{Target: iscsitest.DefaultName}, &e); s != 400 || e.Error.ExitCode != 5 {
		t.Errorf("POST node without a portal: %d %+v", s, e)
	}
	var list api.Nodes
	if s := c.do("GET", "/v1/nodes", nil, &list); s != 200 || len(list.Nodes) != 2 {
		t.Fatalf("GET nodes: %d %+v", s, list)
	}
	if s := c.do("DELETE", "/v1/nodes/iqn.2026-01.org.goiscsi.test:manual", nil, nil); s != 204 {
		t.Errorf("DELETE node: %d", s)
	}
	e = api.ErrorResponse{}
	if s := c.do("GET", "/v1/nodes/iqn.2026-01.org.goiscsi.test:manual", nil, &e); s != 404 || e.Error.Kind != api.KindNotFound {
		t.Errorf("GET deleted node: %d %+v", s, e)
	}
	if res := a.Shutdown(nil); !res.AllLoggedOut || len(res.Logouts) != 0 {
		t.Errorf("Shutdown with no session: %+v", res)
	}

	// A new agent on the same state: the automatic node is logged in.
	a, c = startAgent(t, dir)
	done, err := a.Start()
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("the automatic logins did not end")
	}
	var ss api.Sessions
	if s := c.do("GET", "/v1/sessions", nil, &ss); s != 200 || len(ss.Sessions) != 1 || ss.Sessions[0].Node != iscsitest.DefaultName {
		t.Fatalf("sessions after start: %d %+v", s, ss)
	}
	if n := liveSessions(tg); n != 1 {
		t.Fatalf("the target has %d sessions, want 1", n)
	}
	res := a.Shutdown(nil)
	if !res.AllLoggedOut || len(res.Logouts) != 1 || res.Logouts[0].Outcome != "success" {
		t.Errorf("Shutdown: %+v", res)
	}
	if n := liveSessions(tg); n != 0 {
		t.Errorf("the target still has %d sessions after Shutdown", n)
	}
	if got := metricValue(t, a.Metrics(), "iscsictl_logouts_total", "0x00000000", "success", "shutdown"); got != 1 {
		t.Errorf("shutdown logouts = %v", got)
	}
}

// TestAgentTCPToken: a TCP listener needs a token, refuses a request
// without it or with another, and takes no inline secret.
func TestAgentTCPToken(t *testing.T) {
	dir := t.TempDir()
	a, _ := startAgent(t, dir)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Serve(ln, true, ""); err == nil {
		t.Fatal("Serve on TCP without a token started")
	}
	if err := a.Serve(ln, true, "s3cret-token"); err != nil {
		t.Fatal(err)
	}
	c := &client{t: t, http: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second},
		base: "http://" + ln.Addr().String()}
	var e api.ErrorResponse
	if s := c.do("GET", "/v1/sessions", nil, &e); s != 401 || e.Error.Kind != api.KindUnauthorized {
		t.Errorf("no token: %d %+v", s, e)
	}
	c.token = "wrong"
	if s := c.do("GET", "/v1/sessions", nil, nil); s != 401 {
		t.Errorf("wrong token: %d", s)
	}
	c.token = "s3cret-token"
	var ss api.Sessions
	if s := c.do("GET", "/v1/sessions", nil, &ss); s != 200 || len(ss.Sessions) != 0 {
		t.Errorf("with the token: %d %+v", s, ss)
	}
	e = api.ErrorResponse{}
	if s := c.do("POST", "/v1/sessions", api.LoginRequest{Portal: "127.0.0.1:1", Target: iscsitest.DefaultName,
		Auth: &api.Auth{Secret: "inline-secret-123"}}, &e); s != 400 || strings.Contains(e.Error.Message, "inline-secret-123") {
		t.Errorf("inline secret over TCP: %d %+v", s, e)
	}
}

// TestShutdownHurry: a target that never answers the Logout Request holds
// Shutdown until hurry is closed; then the logout is canceled, Shutdown
// returns at once with AllLoggedOut false and the connection reported
// canceled, and nothing is left running (goleak).
func TestShutdownHurry(t *testing.T) {
	seen := make(chan struct{}, 1)
	tg := iscsitest.NewTarget(iscsitest.Config{LUNs: []int64{1 << 20}, Hook: func(ev *iscsitest.Event) iscsitest.Action {
		if ev.Header.Opcode() != pdu.OpLogoutRequest {
			return iscsitest.Continue
		}
		select {
		case seen <- struct{}{}:
		default:
		}
		return iscsitest.Drop
	}})
	defer tg.Close()
	dir := t.TempDir()
	a, err := New(Config{InitiatorName: initiatorName, StateDir: dir, ShutdownLogout: logout.Options{Timeout: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.login(context.Background(), api.LoginRequest{Portal: tg.Addr(), Target: iscsitest.DefaultName}, ""); err != nil {
		a.Shutdown(nil)
		t.Fatal(err)
	}
	hurry := make(chan struct{})
	done := make(chan ShutdownResult, 1)
	go func() { done <- a.Shutdown(hurry) }()
	select {
	case <-seen:
	case <-time.After(10 * time.Second):
		t.Fatal("no Logout Request reached the target")
	}
	select {
	case res := <-done:
		t.Fatalf("Shutdown returned before the target answered or hurry: %+v", res)
	default:
	}
	start := time.Now()
	close(hurry)
	var res ShutdownResult
	select {
	case res = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not end once hurried")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Shutdown took %s after hurry", d)
	}
	if res.AllLoggedOut || len(res.Logouts) != 1 || res.Logouts[0].Outcome != "canceled" || res.Logouts[0].ExitCode != 6 ||
		res.Logouts[0].Sessions[0].Conns[0].State != "canceled" {
		t.Errorf("hurried Shutdown: %+v", res)
	}
}

// TestServeMetrics: the metrics listener serves the exposition format with
// the agent's series.
func TestServeMetrics(t *testing.T) {
	a, _ := startAgent(t, t.TempDir())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := a.ServeMetrics(ln); err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + ln.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`iscsictl_sessions{state="logged in"} 0`, `iscsictl_logins_total{result="failed"} 0`,
		"iscsictl_reconnects_total 0", "iscsictl_login_duration_seconds_bucket", "go_goroutines"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// TestAgentRecoveryParams: a login request's and a node's
// errorRecoveryLevel and time2retain are what the agent offers (the
// target's answer decides: the minimum of both); out of range, 400.
func TestAgentRecoveryParams(t *testing.T) {
	tg := iscsitest.NewTarget(iscsitest.Config{LUNs: []int64{1 << 20}, ErrorRecoveryLevel: 2})
	defer tg.Close()
	dir := t.TempDir()
	a, c := startAgent(t, dir)
	one := 1
	var lr api.LoginResponse
	req := api.LoginRequest{Portal: tg.Addr(), Target: iscsitest.DefaultName, Connections: 2, ErrorRecoveryLevel: &one, Time2Retain: 20}
	if s := c.do("POST", "/v1/sessions", req, &lr); s != 201 || len(lr.Sessions) != 1 {
		t.Fatalf("login: %d %+v", s, lr)
	}
	if p := lr.Sessions[0].Params; p["ErrorRecoveryLevel"] != 1.0 || p["DefaultTime2Retain"] != 20.0 {
		t.Errorf("negotiated %v; want ErrorRecoveryLevel 1, DefaultTime2Retain 20", p)
	}
	if s := c.do("POST", "/v1/sessions", api.LoginRequest{Portal: tg.Addr(), Target: iscsitest.DefaultName}, &lr); s != 201 ||
		lr.Sessions[0].Params["ErrorRecoveryLevel"] != 2.0 || lr.Sessions[0].Params["DefaultTime2Retain"] != 0.0 {
		t.Errorf("login with the defaults: %d %v; want ErrorRecoveryLevel 2, DefaultTime2Retain 0", s, lr.Sessions[0].Params)
	}
	three := 3
	for _, bad := range []api.LoginRequest{
		{Portal: tg.Addr(), Target: iscsitest.DefaultName, ErrorRecoveryLevel: &three},
		{Portal: tg.Addr(), Target: iscsitest.DefaultName, Time2Retain: -1},
	} {
		var e api.ErrorResponse
		if s := c.do("POST", "/v1/sessions", bad, &e); s != 400 || e.Error.ExitCode != 5 {
			t.Errorf("login %+v: %d %+v; want 400, exit 5", bad, s, e)
		}
	}
	var e api.ErrorResponse
	node := nodes.Node{Target: iscsitest.DefaultName, Portals: []string{tg.Addr()}, Options: nodes.Options{Time2Retain: 3601}}
	if s := c.do("POST", "/v1/nodes", node, &e); s != 400 || !strings.Contains(e.Error.Message, "time2retain 3601") {
		t.Errorf("node with time2retain 3601: %d %+v", s, e)
	}
	if res := a.Shutdown(nil); !res.AllLoggedOut || len(res.Logouts) != 1 {
		t.Errorf("Shutdown: %+v", res)
	}
}

// TestAgentSessionRecovering: a session whose target went away is listed
// as recovering with what its recovery does: when it lost its connection
// and why, the attempts and the last one's error, the next try, when it
// gives up, and until when the target may keep it.
func TestAgentSessionRecovering(t *testing.T) {
	tg := iscsitest.NewTarget(iscsitest.Config{LUNs: []int64{1 << 20}})
	a, c := startAgent(t, t.TempDir())
	var lr api.LoginResponse
	if s := c.do("POST", "/v1/sessions", api.LoginRequest{Portal: tg.Addr(), Target: iscsitest.DefaultName}, &lr); s != 201 {
		t.Fatalf("login: %d %+v", s, lr)
	}
	if r := lr.Sessions[0].Recovery; r.Reconnects != 0 || r.LostAt != "" || r.Attempts != 0 {
		t.Errorf("a new session's recovery: %+v", r)
	}
	tg.Close()
	// The API has no event stream: poll it, within a bound.
	deadline := time.Now().Add(15 * time.Second)
	var got api.Session
	for {
		var ss api.Sessions
		if s := c.do("GET", "/v1/sessions", nil, &ss); s != 200 || len(ss.Sessions) != 1 {
			t.Fatalf("sessions: %d %+v", s, ss)
		}
		got = ss.Sessions[0]
		if got.State == "recovering" && got.Recovery.Attempts >= 1 && got.Recovery.LastError != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no recovery attempt listed within 15 s: %+v", got)
		}
		time.Sleep(50 * time.Millisecond)
	}
	r := got.Recovery
	for name, v := range map[string]string{"lostAt": r.LostAt, "nextTry": r.NextTry, "giveUpAt": r.GiveUpAt, "retainUntil": r.RetainUntil} {
		if _, err := time.Parse(time.RFC3339Nano, v); err != nil {
			t.Errorf("recovery %s %q: %v", name, v, err)
		}
	}
	t.Logf("recovering: %+v", r)
	if n := metricValue(t, a.Metrics(), "iscsictl_sessions", "recovering"); n != 1 {
		t.Errorf("iscsictl_sessions{state=recovering} = %v, want 1", n)
	}
	if r.Cause == "" || !strings.Contains(r.LastError, "refused") {
		t.Errorf("recovery %+v: want the loss's cause and the attempt's error (connection refused)", r)
	}
}
