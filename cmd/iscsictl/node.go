package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/goiscsi/iscsi/agent/api"
	"github.com/goiscsi/iscsi/agent/nodes"
	"github.com/goiscsi/iscsi/initiator"
	"github.com/spf13/pflag"
)

// portalList is a flag that may be given more than once.
type portalList []string

func (p *portalList) String() string     { return strings.Join(*p, ",") }
func (p *portalList) Set(v string) error { *p = append(*p, v); return nil }
func (p *portalList) Type() string       { return "host[:port]" }

// nodeBackend is where node records are: the agent's API when an agent is
// reachable, else the store in --state-dir opened by this process (which
// fails while an agent holds it).
type nodeBackend struct {
	c     *agentClient
	store *nodes.Store
}

func (a *app) nodeBackend(ctx context.Context, af *agentFlags, stateDir string) (*nodeBackend, error) {
	c, err := af.client(ctx, a)
	if err != nil {
		return nil, err
	}
	if c != nil {
		return &nodeBackend{c: c}, nil
	}
	s, err := nodes.Open(stateDir, time.Second)
	if errors.Is(err, nodes.ErrLocked) {
		return nil, &exitErr{code: exitError, msg: fmt.Sprintf("%v; name its socket with --socket or $%s", err, envSocket)}
	}
	if err != nil {
		return nil, err
	}
	a.closers = append(a.closers, func() { s.Close() })
	return &nodeBackend{store: s}, nil
}

func (b *nodeBackend) put(ctx context.Context, n nodes.Node) (nodes.Node, bool, error) {
	if b.store != nil {
		return b.store.Put(n)
	}
	var resp api.NodeResponse
	err := b.c.do(ctx, http.MethodPut, "/v1/nodes/"+url.PathEscape(n.Target), n, &resp)
	return resp.Node, resp.Created, err
}

func (b *nodeBackend) list(ctx context.Context) ([]nodes.Node, error) {
	if b.store != nil {
		return b.store.List()
	}
	var resp api.Nodes
	err := b.c.do(ctx, http.MethodGet, "/v1/nodes", nil, &resp)
	return resp.Nodes, err
}

func (b *nodeBackend) get(ctx context.Context, target string) (nodes.Node, error) {
	if b.store != nil {
		return b.store.Get(target)
	}
	var resp api.NodeResponse
	err := b.c.do(ctx, http.MethodGet, "/v1/nodes/"+url.PathEscape(target), nil, &resp)
	return resp.Node, err
}

func (b *nodeBackend) delete(ctx context.Context, target string) error {
	if b.store != nil {
		return b.store.Delete(target)
	}
	return b.c.do(ctx, http.MethodDelete, "/v1/nodes/"+url.PathEscape(target), nil, nil)
}

// nodeErr gives a store's or the agent's error its exit status.
func nodeErr(err error) error {
	var ae *agentError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ae):
		return cliError(err, nil, false)
	case errors.Is(err, nodes.ErrNotFound):
		return &exitErr{code: exitError, msg: trimPrefixes(err.Error())}
	}
	return err
}

// nodeCommon registers the flags every node subcommand has.
func (a *app) nodeCommon(fs *pflag.FlagSet) (*agentFlags, *string) {
	af := &agentFlags{}
	fs.StringVar(&af.socket, "socket", "", "the agent's Unix `socket` (default $"+envSocket+", else "+defaultSocket()+"); without an agent the records are read and written in --state-dir")
	stateDir := fs.String("state-dir", defaultStateDir(), "the node records' `directory`, when no agent runs")
	return af, stateDir
}

func defNodeAdd(a *app, fs *pflag.FlagSet) runFunc {
	af, stateDir := a.nodeCommon(fs)
	var portals portalList
	fs.VarP(&portals, "portal", "p", "target portal `host[:port]`; repeat for more, tried in order")
	target := fs.StringP("target", "t", "", "target `name`")
	startup := fs.String("startup", "manual", "automatic: the agent logs in at start; manual: only on request")
	sessions := fs.Int("sessions", 1, "sessions to open")
	conns := fs.Int("conns", 1, "connections per session")
	var hdm, ddm digestMode
	digestFlag(fs, &hdm, "header-digest", "header")
	digestFlag(fs, &ddm, "data-digest", "data")
	lt := fs.Duration("login-timeout", 15*time.Second, "bound on each login")
	erl := fs.Int("erl", defaultERL, "highest ErrorRecoveryLevel to offer, `0-2`")
	t2r := fs.Int("time2retain", 0, "DefaultTime2Retain to offer, in `seconds` (0-3600); above 0, at ErrorRecoveryLevel 2 a lost connection's commands move to another connection of the session")
	var au nodes.Auth
	algs := ""
	fs.StringVar(&au.User, "chap-user", "", "CHAP user `name` (default: the agent's initiator name)")
	fs.StringVar(&au.SecretFile, "chap-secret-file", "", "the agent reads the CHAP secret from this `file` at each login")
	fs.StringVar(&au.SecretEnv, "chap-secret-env", "", "the agent reads the CHAP secret from this environment `variable` of its own")
	fs.StringVar(&au.TargetUser, "chap-target-user", "", "mutual CHAP: the `name` the target must give")
	fs.StringVar(&au.TargetSecretFile, "chap-target-secret-file", "", "mutual CHAP: the target's secret `file`")
	fs.StringVar(&au.TargetSecretEnv, "chap-target-secret-env", "", "mutual CHAP: the target's secret environment `variable`")
	fs.BoolVar(&au.AllowShortSecret, "chap-allow-short-secret", false, "accept CHAP secrets shorter than 12 bytes")
	fs.StringVar(&algs, "chap-algorithms", "", "CHAP algorithms to offer, in order: `list` of sha3-256, sha256, sha1, md5")
	return func(ctx context.Context, pos []string) error {
		if len(pos) > 0 {
			u, err := parseISCSIURL(pos[0])
			if err != nil {
				return err
			}
			switch {
			case u.hasSecret:
				return invalidArgf("the URL has a CHAP secret: a node record keeps a reference to a secret, never the secret; give --chap-secret-file or --chap-secret-env")
			case len(portals) > 0:
				return invalidArgf("the portal is given twice: in the URL and with --portal; give one")
			case u.target == "":
				return invalidArgf("the URL names no target: iscsi://HOST[:PORT]/TARGET")
			case *target != "" && *target != u.target:
				return invalidArgf("the target is given twice: %s in the URL and %s with --target; give one", u.target, *target)
			case u.lun >= 0:
				return invalidArgf("a node record is a target, not a LUN: leave the /LUN out of the URL")
			}
			portals, *target = portalList{u.portal}, u.target
			if u.user != "" {
				au.User = u.user
			}
		}
		o := nodes.Options{Sessions: *sessions, Connections: *conns, HeaderDigest: hdm != digestNone, DataDigest: ddm != digestNone,
			LoginTimeoutMs: lt.Milliseconds(), Time2Retain: *t2r}
		if fs.Changed("erl") {
			o.ErrorRecoveryLevel = erl
		}
		return runNodeAdd(ctx, a, af, stateDir, portals, target, startup, o, au, algs)
	}
}

func runNodeAdd(ctx context.Context, a *app, af *agentFlags, stateDir *string, portals portalList, target, startup *string,
	o nodes.Options, au nodes.Auth, algs string) error {
	st, err := nodes.ParseStartup(*startup)
	if err != nil {
		return invalidArgf("--startup %q: want automatic or manual", *startup)
	}
	n := nodes.Node{Target: *target, Portals: portals, Startup: st, Options: o}
	if *target == "" {
		return invalidArgf("--target is required")
	}
	if au.Algorithms, err = chapAlgorithms(algs); err != nil {
		return err
	}
	if au.SecretFile != "" || au.SecretEnv != "" || au.User != "" || au.TargetUser != "" || au.TargetSecretFile != "" || au.TargetSecretEnv != "" {
		// The agent reads the files from its own working directory.
		for _, f := range []*string{&au.SecretFile, &au.TargetSecretFile} {
			if *f != "" {
				if *f, err = filepath.Abs(*f); err != nil {
					return err
				}
			}
		}
		n.Auth = &au
	}
	if err := n.Validate(); err != nil {
		return err
	}
	b, err := a.nodeBackend(ctx, af, *stateDir)
	if err != nil {
		return err
	}
	n, created, err := b.put(ctx, n)
	if err != nil {
		return nodeErr(err)
	}
	if a.json {
		a.printJSON(map[string]any{"command": "node add", "node": n, "created": created})
		return nil
	}
	verb := "Updated"
	if created {
		verb = "Added"
	}
	a.printf("%s node %s (%s, startup %s)\n", verb, safe(n.Target), strings.Join(n.Portals, ", "), n.Startup)
	return nil
}

func defNodeList(a *app, fs *pflag.FlagSet) runFunc { return defNodeRead(a, fs, true) }
func defNodeShow(a *app, fs *pflag.FlagSet) runFunc { return defNodeRead(a, fs, false) }

func defNodeRead(a *app, fs *pflag.FlagSet, all bool) runFunc {
	af, stateDir := a.nodeCommon(fs)
	target := fs.StringP("target", "t", "", "target `name`")
	return func(ctx context.Context, pos []string) error {
		return runNodeRead(ctx, a, af, stateDir, target, pos, all)
	}
}

// runNodeRead lists the records, or shows one.
func runNodeRead(ctx context.Context, a *app, af *agentFlags, stateDir, target *string, pos []string, all bool) error {
	name, err := oneTarget(all, *target, pos)
	if err != nil {
		return err
	}
	b, err := a.nodeBackend(ctx, af, *stateDir)
	if err != nil {
		return err
	}
	var list []nodes.Node
	if all {
		if list, err = b.list(ctx); err != nil {
			return nodeErr(err)
		}
	} else {
		n, err := b.get(ctx, name)
		if err != nil {
			return nodeErr(err)
		}
		if a.json {
			a.printJSON(map[string]any{"command": a.name, "node": n})
			return nil
		}
		list = []nodes.Node{n}
	}
	if a.json {
		a.printJSON(map[string]any{"command": a.name, "nodes": list})
		return nil
	}
	if all && len(list) == 0 {
		a.printf("No node records\n")
		return nil
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TARGET\tPORTALS\tSTARTUP\tSESSIONS\tCONNS\tAUTH")
	for _, n := range list {
		auth := "none"
		if n.Auth != nil {
			auth = "CHAP, secret from " + secretRef(n.Auth.SecretFile, n.Auth.SecretEnv)
			if n.Auth.TargetUser != "" {
				auth += "; mutual, from " + secretRef(n.Auth.TargetSecretFile, n.Auth.TargetSecretEnv)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\n", safe(n.Target), strings.Join(n.Portals, ","), n.Startup,
			max(n.Options.Sessions, 1), max(n.Options.Connections, 1), safe(auth))
	}
	tw.Flush()
	return nil
}

func secretRef(file, env string) string {
	if file != "" {
		return file
	}
	return "$" + env
}

// oneTarget returns the target named by --target or the one positional
// argument.
func oneTarget(none bool, flagName string, pos []string) (string, error) {
	if none {
		if len(pos) > 0 || flagName != "" {
			return "", invalidArgf("node list takes no target")
		}
		return "", nil
	}
	switch {
	case len(pos) > 1:
		return "", invalidArgf("one target, got %d arguments", len(pos))
	case len(pos) == 1 && flagName != "":
		return "", invalidArgf("the target is given twice: as an argument and with --target")
	case len(pos) == 1:
		flagName = pos[0]
	case flagName == "":
		return "", invalidArgf("name the target (argument or --target)")
	}
	n, err := initiator.NormalizeName(flagName)
	if err != nil {
		return "", err
	}
	return n, nil
}

func defNodeDelete(a *app, fs *pflag.FlagSet) runFunc {
	af, stateDir := a.nodeCommon(fs)
	target := fs.StringP("target", "t", "", "target `name`")
	return func(ctx context.Context, pos []string) error { return runNodeDelete(ctx, a, af, stateDir, target, pos) }
}

func runNodeDelete(ctx context.Context, a *app, af *agentFlags, stateDir, target *string, pos []string) error {
	name, err := oneTarget(false, *target, pos)
	if err != nil {
		return err
	}
	b, err := a.nodeBackend(ctx, af, *stateDir)
	if err != nil {
		return err
	}
	if err := b.delete(ctx, name); err != nil {
		return nodeErr(err)
	}
	if a.json {
		a.printJSON(map[string]any{"command": a.name, "target": name, "deleted": true})
		return nil
	}
	a.printf("Deleted node %s\n", safe(name))
	return nil
}
