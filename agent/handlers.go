package agent

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/goiscsi/iscsi/agent/api"
	"github.com/goiscsi/iscsi/agent/nodes"
	"github.com/goiscsi/iscsi/initiator"
	"github.com/goiscsi/iscsi/logout"
	"github.com/goiscsi/iscsi/session"
	"go.uber.org/zap"
)

// maxBody bounds a request's body.
const maxBody = 1 << 20

// handler returns the API. remote marks a listener other than the Unix
// socket: token is then required of every request.
func (a *Agent) handler(remote bool, token string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/version", a.getVersion)
	mux.HandleFunc("GET /v1/sessions", a.getSessions)
	mux.HandleFunc("POST /v1/sessions", func(w http.ResponseWriter, r *http.Request) { a.postSessions(w, r, remote) })
	mux.HandleFunc("DELETE /v1/sessions/{tsih}", a.deleteSession)
	mux.HandleFunc("POST /v1/targets/{name}/logout", a.postTargetLogout)
	mux.HandleFunc("GET /v1/nodes", a.getNodes)
	mux.HandleFunc("POST /v1/nodes", a.putNode)
	mux.HandleFunc("GET /v1/nodes/{name}", a.getNode)
	mux.HandleFunc("PUT /v1/nodes/{name}", a.putNode)
	mux.HandleFunc("DELETE /v1/nodes/{name}", a.deleteNode)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, api.Error{Kind: api.KindNotFound, ExitCode: 1,
			Message: fmt.Sprintf("no endpoint %s %s (this agent speaks API v%d: see docs/API.md)", r.Method, r.URL.Path, api.Version)})
	})
	if !remote {
		return mux
	}
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="iscsictl"`)
			writeError(w, http.StatusUnauthorized, api.Error{Kind: api.KindUnauthorized, ExitCode: 1,
				Message: "missing or wrong bearer token"})
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, e api.Error) {
	writeJSON(w, status, api.ErrorResponse{APIVersion: api.Version, Error: e})
}

// decode reads a JSON body into v; an empty body leaves v as it is.
func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: request body: %v", api.ErrInvalid, err)
	}
	return nil
}

// failure writes err as the API's error: a malformed request is 400 with
// exit status 5, a refused or failed login 502 with the target's status.
func (a *Agent) failure(w http.ResponseWriter, err error) {
	status, e := describe(err)
	if status >= 500 && status != http.StatusBadGateway && status != http.StatusServiceUnavailable {
		a.log.Warn("API request failed", zap.String("error", e.Message))
	}
	writeError(w, status, e)
}

// describe maps an error to its HTTP status and API error.
func describe(err error) (int, api.Error) {
	e := api.Error{Message: api.TrimPrefixes(err.Error()), ExitCode: 1}
	var step *stepError
	if errors.As(err, &step) {
		e.Step = step.step
		e.Message = api.TrimPrefixes(step.err.Error())
	}
	var le *session.LoginError
	var ne *session.NegotiationError
	switch {
	case errors.Is(err, api.ErrInvalid), errors.Is(err, initiator.ErrInvalidArg), errors.Is(err, session.ErrShortSecret):
		e.Kind, e.ExitCode = api.KindInvalid, 5
		return http.StatusBadRequest, e
	case errors.Is(err, errAmbiguous):
		e.Kind, e.ExitCode = api.KindConflict, 5
		return http.StatusConflict, e
	case errors.Is(err, nodes.ErrNotFound):
		e.Kind = api.KindNotFound
		return http.StatusNotFound, e
	case errors.Is(err, errShuttingDown):
		e.Kind = api.KindShuttingDown
		return http.StatusServiceUnavailable, e
	case errors.As(err, &le):
		st := uint16(le.Status)
		e.Kind, e.LoginStatus = api.KindLogin, &st
		return http.StatusBadGateway, e
	case errors.As(err, &ne):
		e.Kind, e.NegotiationKey, e.NegotiationReason = api.KindLogin, ne.Key, ne.Reason
		return http.StatusBadGateway, e
	case step != nil:
		e.Kind = api.KindLogin
		return http.StatusBadGateway, e
	}
	e.Kind = api.KindInternal
	return http.StatusInternalServerError, e
}

var errShuttingDown = errors.New("the agent is shutting down")

func (a *Agent) getVersion(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, a.version())
}

func (a *Agent) getSessions(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, api.Sessions{APIVersion: api.Version, Sessions: a.sessions()})
}

func (a *Agent) postSessions(w http.ResponseWriter, r *http.Request, remote bool) {
	var req api.LoginRequest
	if err := decode(r, &req); err != nil {
		a.failure(w, err)
		return
	}
	if remote && req.Auth.Inline() {
		a.failure(w, fmt.Errorf("%w: a CHAP secret inline is taken on the Unix socket only; name a secretFile or secretEnv of the agent", api.ErrInvalid))
		return
	}
	if !a.begin() {
		a.failure(w, errShuttingDown)
		return
	}
	defer a.wg.Done()
	// The login stops when the client goes away or the agent shuts down.
	ctx, cancel := context.WithCancel(a.loginCtx)
	defer cancel()
	stop := context.AfterFunc(r.Context(), cancel)
	defer stop()
	ss, err := a.login(ctx, req, "")
	if err != nil {
		a.failure(w, err)
		return
	}
	out := api.LoginResponse{APIVersion: api.Version, Target: ss[0].TargetName(), Portal: req.Portal, Sessions: []api.Session{}}
	out.Portal, _ = nodes.NormalizePortal(req.Portal)
	for _, s := range ss {
		out.Sessions = append(out.Sessions, a.describe(out.Target, s))
	}
	writeJSON(w, http.StatusCreated, out)
}

// logoutRequestFromQuery reads a LogoutRequest from URL parameters.
func logoutRequestFromQuery(r *http.Request) (api.LogoutRequest, error) {
	q := r.URL.Query()
	req := api.LogoutRequest{Strategy: q.Get("strategy")}
	for _, f := range []struct {
		name string
		dst  *int64
	}{{"timeoutMs", &req.TimeoutMs}, {"drainMs", &req.DrainMs}} {
		if v := q.Get(f.name); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return req, fmt.Errorf("%w: %s=%q: want milliseconds", api.ErrInvalid, f.name, v)
			}
			*f.dst = n
		}
	}
	if v := q.Get("force"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return req, fmt.Errorf("%w: force=%q: want true or false", api.ErrInvalid, v)
		}
		req.Force = b
	}
	return req, nil
}

func (a *Agent) deleteSession(w http.ResponseWriter, r *http.Request) {
	tsih, err := api.ParseTSIH(r.PathValue("tsih"))
	if err != nil {
		a.failure(w, err)
		return
	}
	req, err := logoutRequestFromQuery(r)
	if err != nil {
		a.failure(w, err)
		return
	}
	opts, err := req.Options()
	if err != nil {
		a.failure(w, err)
		return
	}
	target, s, err := a.findSession(tsih, r.URL.Query().Get("target"))
	if err != nil {
		a.failure(w, err)
		return
	}
	if !a.begin() {
		a.failure(w, errShuttingDown)
		return
	}
	defer a.wg.Done()
	var res logout.Result
	if s == nil {
		// No such session: the engine's answer for nothing to log out.
		name := r.URL.Query().Get("target")
		if name == "" {
			name = fmt.Sprintf("(TSIH 0x%04x)", tsih)
		}
		res = a.waitOp(r.Context(), logout.Start(name, nil, opts), "session", opts)
	} else {
		res = a.logoutSession(r.Context(), target, s, opts)
	}
	writeLogout(w, &res, opts.Strategy)
}

func (a *Agent) postTargetLogout(w http.ResponseWriter, r *http.Request) {
	var req api.LogoutRequest
	if err := decode(r, &req); err != nil {
		a.failure(w, err)
		return
	}
	opts, err := req.Options()
	if err != nil {
		a.failure(w, err)
		return
	}
	if _, err := initiator.NormalizeName(r.PathValue("name")); err != nil {
		a.failure(w, err)
		return
	}
	if !a.begin() {
		a.failure(w, errShuttingDown)
		return
	}
	defer a.wg.Done()
	res, err := a.logoutTarget(r.Context(), r.PathValue("name"), opts, "target")
	if err != nil {
		a.failure(w, err)
		return
	}
	writeLogout(w, &res, opts.Strategy)
}

// writeLogout answers a logout: 200 on success, else 404 (session not
// found) or 502 with the outcome's HRESULT in the error.
func writeLogout(w http.ResponseWriter, res *logout.Result, strategy logout.Strategy) {
	out := api.LogoutResponse{APIVersion: api.Version, Logout: api.NewLogout(res, strategy)}
	status := http.StatusOK
	if res.Outcome != logout.Success {
		status = http.StatusBadGateway
		kind := api.KindLogout
		if res.Outcome == logout.SessionNotFound {
			status, kind = http.StatusNotFound, api.KindNotFound
		}
		out.Error = &api.Error{Message: api.TrimPrefixes(res.Err().Error()), Kind: kind,
			ExitCode: api.ExitCode(res.Outcome), HRESULT: api.HRESULT(res.HRESULT())}
	}
	writeJSON(w, status, out)
}

func (a *Agent) getNodes(w http.ResponseWriter, r *http.Request) {
	ns, err := a.store.List()
	if err != nil {
		a.failure(w, err)
		return
	}
	writeJSON(w, http.StatusOK, api.Nodes{APIVersion: api.Version, Nodes: ns})
}

func (a *Agent) getNode(w http.ResponseWriter, r *http.Request) {
	n, err := a.store.Get(r.PathValue("name"))
	if err != nil {
		a.failure(w, err)
		return
	}
	writeJSON(w, http.StatusOK, api.NodeResponse{APIVersion: api.Version, Node: n})
}

// putNode creates or replaces a record: POST /v1/nodes with the target in
// the body, or PUT /v1/nodes/{name}, whose name must match the body's if
// the body gives one.
func (a *Agent) putNode(w http.ResponseWriter, r *http.Request) {
	var n nodes.Node
	if err := decode(r, &n); err != nil {
		a.failure(w, err)
		return
	}
	if name := r.PathValue("name"); name != "" {
		if n.Target != "" && !sameName(n.Target, name) {
			a.failure(w, fmt.Errorf("%w: the body names target %q, the path %q", api.ErrInvalid, n.Target, name))
			return
		}
		n.Target = name
	}
	n, created, err := a.store.Put(n)
	if err != nil {
		a.failure(w, err)
		return
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	writeJSON(w, status, api.NodeResponse{APIVersion: api.Version, Node: n, Created: created})
}

func sameName(x, y string) bool {
	nx, err1 := initiator.NormalizeName(x)
	ny, err2 := initiator.NormalizeName(y)
	return err1 == nil && err2 == nil && nx == ny || strings.EqualFold(x, y)
}

func (a *Agent) deleteNode(w http.ResponseWriter, r *http.Request) {
	if err := a.store.Delete(r.PathValue("name")); err != nil {
		a.failure(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
