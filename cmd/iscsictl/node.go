package main

import (
	"context"
	"errors"
	"flag"
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
)

// portalList is a flag that may be given more than once.
type portalList []string

func (p *portalList) String() string     { return strings.Join(*p, ",") }
func (p *portalList) Set(v string) error { *p = append(*p, v); return nil }

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

// runNode manages node records: add, list, show, delete.
func runNode(ctx context.Context, a *app, args []string) error {
	sub := ""
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		sub, args = args[0], args[1:]
	}
	switch sub {
	case "add":
		return runNodeAdd(ctx, a, args)
	case "list", "ls":
		return runNodeRead(ctx, a, args, true)
	case "show":
		return runNodeRead(ctx, a, args, false)
	case "delete", "rm":
		return runNodeDelete(ctx, a, args)
	}
	fs := a.flags("add|list|show|delete [flags]")
	if _, err := a.parse(fs, args); err != nil {
		return err
	}
	if sub == "" {
		return invalidArgf("node: say add, list, show or delete")
	}
	return invalidArgf("node: unknown subcommand %q: want add, list, show or delete", sub)
}

// nodeCommon registers the flags every node subcommand has.
func (a *app) nodeCommon(fs *flag.FlagSet) (*agentFlags, *string) {
	af := &agentFlags{}
	fs.StringVar(&af.socket, "socket", "", "the agent's Unix `socket` (default $"+envSocket+", else "+defaultSocket()+"); without an agent the records are read and written in --state-dir")
	stateDir := fs.String("state-dir", defaultStateDir(), "the node records' `directory`, when no agent runs")
	return af, stateDir
}

func runNodeAdd(ctx context.Context, a *app, args []string) error {
	a.name = "node add"
	fs := a.flags("--target NAME --portal HOST[:PORT] [--portal ...] [--startup automatic|manual] [flags]")
	af, stateDir := a.nodeCommon(fs)
	var portals portalList
	fs.Var(&portals, "portal", "target portal `host[:port]`; repeat for more, tried in order")
	target := fs.String("target", "", "target `name`")
	startup := fs.String("startup", "manual", "automatic: the agent logs in at start; manual: only on request")
	sessions := fs.Int("sessions", 1, "sessions to open")
	conns := fs.Int("conns", 1, "connections per session")
	hd := fs.Bool("header-digest", false, "offer CRC32C header digests")
	dd := fs.Bool("data-digest", false, "offer CRC32C data digests")
	lt := fs.Duration("login-timeout", 15*time.Second, "bound on each login")
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
	pos, err := a.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return invalidArgf("node add takes no argument, got %q", pos[0])
	}
	st, err := nodes.ParseStartup(*startup)
	if err != nil {
		return invalidArgf("--startup %q: want automatic or manual", *startup)
	}
	n := nodes.Node{Target: *target, Portals: portals, Startup: st, Options: nodes.Options{Sessions: *sessions, Connections: *conns,
		HeaderDigest: *hd, DataDigest: *dd, LoginTimeoutMs: lt.Milliseconds()}}
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

// runNodeRead lists the records, or shows one.
func runNodeRead(ctx context.Context, a *app, args []string, all bool) error {
	a.name = "node show"
	usage := "NAME|--target NAME [flags]"
	if all {
		a.name, usage = "node list", "[flags]"
	}
	fs := a.flags(usage)
	af, stateDir := a.nodeCommon(fs)
	target := fs.String("target", "", "target `name`")
	pos, err := a.parse(fs, args)
	if err != nil {
		return err
	}
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

func runNodeDelete(ctx context.Context, a *app, args []string) error {
	a.name = "node delete"
	fs := a.flags("NAME|--target NAME [flags]")
	af, stateDir := a.nodeCommon(fs)
	target := fs.String("target", "", "target `name`")
	pos, err := a.parse(fs, args)
	if err != nil {
		return err
	}
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
