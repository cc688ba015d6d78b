// Command iscsictl drives the goiscsi initiator from a shell: it discovers
// targets, logs in, does SCSI I/O, measures performance, logs out of a whole
// target with per-connection results, and decodes the captures it records.
//
// `iscsictl demo` runs the whole story against an embedded in-memory target,
// with no set-up. Run `iscsictl help` for the commands and exit codes.
//
// The command line is built on spf13/cobra (with spf13/pflag for GNU flag
// syntax) rather than alecthomas/kong: cobra is what the tools an operator
// already drives beside an initiator are built on (kubectl, etcdctl, docker,
// podman, the CSI drivers), so its help layout, `completion bash|zsh|fish`
// and flag syntax are the ones they know; it builds the command tree from
// code, which keeps each command's flags next to the code that reads them
// (kong would move them into struct tags, away from their checks), and it
// adds one well-kept dependency (pflag) rather than a reflection-driven
// grammar. What cobra does by default that does not fit is changed here:
// a usage error is one line and exit status 5 (E_INVALIDARG), never a
// screen of usage, and the exit statuses of the commands stay 0 to 6.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"sort"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// runFunc runs a command with its positional arguments, once its flags are
// parsed.
type runFunc func(ctx context.Context, pos []string) error

// command is one subcommand: define registers its flags on fs and returns
// the function that runs it.
type command struct {
	name    string
	summary string
	// use is the synopsis after the command's name.
	use    string
	args   cobra.PositionalArgs
	define func(a *app, fs *pflag.FlagSet) runFunc
	// sub are subcommands (node add, ...); a command with sub has no
	// define of its own.
	sub     []command
	aliases []string
	// exclusive are groups of flags of which at most one may be given.
	exclusive [][]string
}

var commands = []command{
	{name: "demo", summary: "log in, do I/O and log out of an embedded in-memory target, with optional faults",
		use: "[--sessions N] [--conns M] [--fail-sessions K --fault F] [flags]", define: defDemo},
	{name: "discover", summary: "list the targets a portal offers (SendTargets)",
		use: "(--portal HOST[:PORT] | iscsi://HOST[:PORT]) [flags]", define: defDiscover, args: urlArg},
	{name: "login", summary: "log in (N sessions x M connections), print sessions and negotiated parameters, log out",
		use: "(--portal HOST[:PORT] [--target NAME] | iscsi://HOST[:PORT]/TARGET) [--sessions N --conns M] [flags]", define: defLogin, args: urlArg},
	{name: "inquiry", summary: "print the INQUIRY data of the target's LUNs",
		use: "(--portal HOST[:PORT] [--target NAME] [--lun N] | iscsi://HOST[:PORT]/TARGET[/LUN]) [flags]", define: defInquiry, args: urlArg},
	{name: "readcap", summary: "print the capacity of the target's LUNs (READ CAPACITY 16)",
		use: "(--portal HOST[:PORT] [--target NAME] [--lun N] | iscsi://HOST[:PORT]/TARGET[/LUN]) [flags]", define: defReadCap, args: urlArg},
	{name: "read", summary: "read blocks from a LUN to a file or as a hex dump",
		use:    "(--portal HOST[:PORT] [--target NAME] [--lun N] | iscsi://HOST[:PORT]/TARGET[/LUN]) --lba LBA --blocks N [--out FILE] [flags]",
		define: defRead, args: urlArg},
	{name: "write", summary: "write blocks to a LUN from a file or a pattern, optionally verifying",
		use:    "(--portal HOST[:PORT] [--target NAME] [--lun N] | iscsi://HOST[:PORT]/TARGET[/LUN]) --lba LBA (--in FILE | --blocks N [--fill BYTE | --random]) [--verify] [flags]",
		define: defWrite, args: urlArg, exclusive: [][]string{{"in", "blocks"}, {"fill", "random"}}},
	{name: "perf", summary: "measure IOPS, MB/s, latency percentiles and CPU time per I/O",
		use:    "(--portal HOST[:PORT] [--target NAME] [--lun N] | iscsi://HOST[:PORT]/TARGET[/LUN]) [--bs BYTES] [--qd N] [--duration D] [--rw read|write] [--pattern random|sequential] [flags]",
		define: defPerf, args: urlArg},
	{name: "logout", summary: "open sessions to a target (optionally with I/O running) and log out of all of them",
		use:    "(--target NAME [--portal HOST[:PORT]] | iscsi://HOST[:PORT]/TARGET) [--sessions N --conns M] [--session TSIH | --session-index N [--cid CID]] [--io] [--strategy S] [--drain D] [--timeout D] [--deadline D] [--in-flight P] [--force] [--gone-ok] [flags]",
		define: defLogout, args: urlArg, exclusive: [][]string{{"session", "session-index"}}},
	{name: "decode", summary: "print the iSCSI PDUs of a pcap or pcapng file",
		use: "FILE.pcap [--port N[,N...]] [--header-digest] [--data-digest] [flags]", define: defDecode, args: exactArgs(1, "a capture file")},
	{name: "serve", summary: "run the agent: it holds sessions, node records and metrics for the other commands",
		use: "[--socket PATH] [--state-dir DIR] [--initiator-name NAME] [--metrics-listen ADDR] [--listen-tcp ADDR --token-file FILE] [flags]", define: defServe},
	{name: "sessions", summary: "list the sessions the agent holds",
		use: "[--target NAME] [--params] [--socket PATH] [flags]", define: defSessions},
	{name: "node", summary: "add, list, show or delete node records (the targets the agent logs in to at start)",
		use: "add|list|show|delete [flags]", sub: []command{
			{name: "add", summary: "add or update a node record",
				use: "(--target NAME --portal HOST[:PORT] [--portal ...] | iscsi://HOST[:PORT]/TARGET) [--startup automatic|manual] [flags]", define: defNodeAdd, args: urlArg},
			{name: "list", aliases: []string{"ls"}, summary: "list the node records", use: "[flags]", define: defNodeList},
			{name: "show", summary: "show one node record", use: "NAME|--target NAME [flags]", define: defNodeShow, args: maxArgs(1, "a target name")},
			{name: "delete", aliases: []string{"rm"}, summary: "delete a node record", use: "NAME|--target NAME [flags]", define: defNodeDelete, args: maxArgs(1, "a target name")},
		}},
	{name: "version", summary: "print the module version and the VCS revision it was built from", use: "[flags]", define: defVersion},
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer func() {
		// A panic is a bug; Go would exit with status 2, which here means
		// "no session to the target". Say so and exit 1 instead.
		if v := recover(); v != nil {
			fmt.Fprintf(os.Stderr, "iscsictl: internal error (a bug, please report it): %s\n%s", safe(fmt.Sprint(v)), debug.Stack())
			os.Exit(exitError)
		}
	}()
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// usageError is a command line cobra or pflag refused: an unknown command
// or flag, a flag's malformed value, arguments that are not wanted.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }

// run runs the command line args and returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	a := newApp("", stdout, stderr)
	root := newRoot(ctx, a)
	root.SetArgs(args)
	cmd, err := root.ExecuteC()
	a.finish()
	switch {
	case errors.Is(err, pflag.ErrHelp):
		return exitOK
	case err != nil && !a.ran:
		// Flag parsing, positional arguments and flag groups fail before
		// the command runs: a usage error, said in one line.
		name := strings.TrimPrefix(cmd.CommandPath(), "iscsictl")
		msg := err.Error()
		if msg == "" {
			msg = "invalid command line"
		}
		fmt.Fprintf(stderr, "iscsictl%s: %s (see `%s --help`)\n", name, safe(msg), cmd.CommandPath())
		if a.json {
			a.printJSON(map[string]any{"schemaVersion": jsonSchemaVersion, "command": strings.TrimSpace(name), "error": msg, "exitCode": exitInvalidArg})
		}
		return exitInvalidArg
	}
	return a.exit(err)
}

// newRoot builds the command tree; the commands run in ctx.
func newRoot(ctx context.Context, a *app) *cobra.Command {
	root := &cobra.Command{
		Use:           "iscsictl",
		Short:         "a pure-Go iSCSI initiator on the command line",
		SilenceErrors: true,
		SilenceUsage:  true,
		// Without a command: the usage on stderr, status 5.
		RunE: func(c *cobra.Command, pos []string) error {
			if len(pos) > 0 {
				return &usageError{fmt.Errorf("unknown command %q", pos[0])}
			}
			rootUsage(a.stderr)
			a.ran = true
			return &exitErr{code: exitInvalidArg, msg: "no command given"}
		},
		CompletionOptions: cobra.CompletionOptions{HiddenDefaultCmd: false},
	}
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{err} })
	pf := root.PersistentFlags()
	pf.BoolVarP(&a.json, "json", "j", false, "print machine-readable JSON on stdout (schema: docs/JSON.md)")
	pf.StringVar(&a.logLevel, "log-level", "warn", "log level on stderr: debug, info, warn, error")
	pf.StringVar(&a.logFormat, "log-format", "console", "log format on stderr: console or json")
	completeWords(root, "log-level", "debug", "info", "warn", "error")
	completeWords(root, "log-format", "console", "json")

	for _, c := range commands {
		root.AddCommand(a.cobraCommand(ctx, c, ""))
	}
	// Help for one command (-h, --help) goes to stderr, as it always did,
	// so that it never mixes with a command's output; `iscsictl help`
	// prints on stdout.
	defHelp := root.HelpFunc()
	root.SetHelpFunc(func(c *cobra.Command, args []string) {
		if c == root {
			rootUsage(a.stdout)
			return
		}
		w := a.stderr
		if a.helpOnStdout {
			w = a.stdout
		}
		c.SetOut(w)
		defHelp(c, args)
	})
	root.SetHelpCommand(&cobra.Command{
		Use:   "help [command]",
		Short: "print the commands, or a command's flags",
		RunE: func(c *cobra.Command, args []string) error {
			a.ran = true
			a.helpOnStdout = true
			cmd, _, err := root.Find(args)
			if err != nil || cmd == nil {
				return invalidArgf("help: unknown command %q", strings.Join(args, " "))
			}
			cmd.InitDefaultHelpFlag()
			return cmd.Help()
		},
		ValidArgsFunction: func(_ *cobra.Command, _ []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
			var names []string
			for _, c := range commands {
				names = append(names, c.name)
			}
			return names, cobra.ShellCompDirectiveNoFileComp
		},
	})
	root.SetUsageTemplate(usageTemplate)
	return root
}

// cobraCommand builds c's cobra command; parent is the path of a parent
// command, for its name in messages.
func (a *app) cobraCommand(ctx context.Context, c command, parent string) *cobra.Command {
	full := strings.TrimSpace(parent + " " + c.name)
	cc := &cobra.Command{
		Use:     c.name + " " + c.use,
		Short:   c.summary,
		Aliases: c.aliases,
	}
	if len(c.sub) > 0 {
		for _, s := range c.sub {
			cc.AddCommand(a.cobraCommand(ctx, s, full))
		}
		names := make([]string, len(c.sub))
		for i, s := range c.sub {
			names[i] = s.name
		}
		cc.Args = func(_ *cobra.Command, pos []string) error {
			if len(pos) > 0 {
				return &usageError{fmt.Errorf("unknown subcommand %q: want %s", pos[0], orList(names))}
			}
			return nil
		}
		cc.RunE = func(*cobra.Command, []string) error {
			a.ran = true
			a.name = full
			return invalidArgf("say %s", orList(names))
		}
		return cc
	}
	runIt := c.define(a, cc.Flags())
	cc.Args = c.args
	if cc.Args == nil {
		cc.Args = noArgs
	}
	// Flags that exclude each other: one line naming them.
	cc.PreRunE = func(cmd *cobra.Command, _ []string) error {
		for _, g := range c.exclusive {
			var set []string
			for _, name := range g {
				if cmd.Flags().Changed(name) {
					set = append(set, "--"+name)
				}
			}
			if len(set) > 1 {
				return &usageError{fmt.Errorf("%s exclude each other: give one", andList(set))}
			}
		}
		return nil
	}
	registerCompletions(cc)
	cc.RunE = func(_ *cobra.Command, pos []string) error {
		a.ran = true
		a.name = full
		if err := a.setup(); err != nil {
			return err
		}
		return runIt(ctx, pos)
	}
	return cc
}

// orList joins words as "a, b or c".
func orList(w []string) string {
	if len(w) < 2 {
		return strings.Join(w, "")
	}
	return strings.Join(w[:len(w)-1], ", ") + " or " + w[len(w)-1]
}

// noArgs refuses positional arguments, naming the first.
func noArgs(c *cobra.Command, pos []string) error {
	if len(pos) > 0 {
		return &usageError{fmt.Errorf("unexpected argument %q: %s takes none", pos[0], c.Name())}
	}
	return nil
}

// urlArg accepts at most one positional argument, an iscsi:// URL.
func urlArg(c *cobra.Command, pos []string) error {
	switch {
	case len(pos) > 1:
		return &usageError{fmt.Errorf("unexpected argument %q: %s takes at most one iscsi:// URL", pos[1], c.Name())}
	case len(pos) == 1 && !strings.HasPrefix(strings.ToLower(pos[0]), "iscsi://"):
		return &usageError{fmt.Errorf("unexpected argument %q: %s takes flags, or an iscsi://HOST[:PORT]/TARGET[/LUN] URL", pos[0], c.Name())}
	}
	return nil
}

// exactArgs wants n positional arguments, described by what.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(c *cobra.Command, pos []string) error {
		switch {
		case len(pos) > n:
			return &usageError{fmt.Errorf("unexpected argument %q: %s takes %s", pos[n], c.Name(), what)}
		case len(pos) < n:
			return &usageError{fmt.Errorf("%s takes %s", c.Name(), what)}
		}
		return nil
	}
}

// maxArgs wants at most n positional arguments, described by what.
func maxArgs(n int, what string) cobra.PositionalArgs {
	return func(c *cobra.Command, pos []string) error {
		if len(pos) > n {
			return &usageError{fmt.Errorf("unexpected argument %q: %s takes at most %s", pos[n], c.Name(), what)}
		}
		return nil
	}
}

// completeWords makes the shell complete flag name of c with words.
func completeWords(c *cobra.Command, name string, words ...string) {
	c.RegisterFlagCompletionFunc(name, cobra.FixedCompletions(words, cobra.ShellCompDirectiveNoFileComp))
}

// flagWords are the values of the flags that take one of a few words.
var flagWords = map[string][]string{
	"strategy":      {"per-connection", "per-session"},
	"in-flight":     {"drain", "abort", "fail"},
	"rw":            {"read", "write"},
	"pattern":       {"random", "sequential"},
	"startup":       {"automatic", "manual"},
	"header-digest": {"none", "offer", "required"},
	"data-digest":   {"none", "offer", "required"},
}

// registerCompletions adds the completions of c's word-valued flags.
func registerCompletions(c *cobra.Command) {
	c.Flags().VisitAll(func(f *pflag.Flag) {
		if w, ok := flagWords[f.Name]; ok {
			completeWords(c, f.Name, w...)
		}
		if f.Name == "fault" {
			names := make([]string, 0, len(faults))
			for k := range faults {
				names = append(names, k)
			}
			sort.Strings(names)
			completeWords(c, f.Name, names...)
		}
	})
}

// usageTemplate is a command's help: its synopsis, flags, the global
// flags, and its subcommands if it has any.
const usageTemplate = `Usage: {{.CommandPath}} {{if .HasAvailableSubCommands}}COMMAND [flags]{{else}}{{.Use | trimName}}{{end}}
{{- if .HasAvailableSubCommands}}

Commands:{{range .Commands}}{{if .IsAvailableCommand}}
  {{rpad .Name .NamePadding}} {{.Short}}{{end}}{{end}}{{end}}
{{- if .HasAvailableLocalFlags}}

Flags:
{{.LocalFlags.FlagUsages | trimTrailingWhitespaces}}{{end}}
{{- if .HasAvailableInheritedFlags}}

Global flags:
{{.InheritedFlags.FlagUsages | trimTrailingWhitespaces}}{{end}}
`

func init() {
	cobra.AddTemplateFunc("trimName", func(use string) string {
		if i := strings.IndexByte(use, ' '); i >= 0 {
			return use[i+1:]
		}
		return ""
	})
}

// rootUsage prints the commands, the exit statuses and where secrets come
// from: the text of `iscsictl help`, which the README quotes.
func rootUsage(w io.Writer) {
	fmt.Fprintf(w, "iscsictl: a pure-Go iSCSI initiator on the command line\n\nUsage: iscsictl COMMAND [flags]\n\nCommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "  %-10s %s\n", "completion", "print a shell completion script: bash, zsh, fish or powershell")
	fmt.Fprintf(w, "\nGlobal flags:\n  -j, --json         print machine-readable JSON on stdout (schema: docs/JSON.md)\n"+
		"      --log-level    log level on stderr: debug, info, warn, error (default warn)\n"+
		"      --log-format   log format on stderr: console or json (default console)\n")
	fmt.Fprintf(w, "\nA target is named by flags (-p/--portal, -t/--target, -l/--lun) or by a URL:\n"+
		"  iscsi://[USER@]HOST[:PORT]/TARGET-IQN[/LUN]\n")
	fmt.Fprintf(w, "\nRun `iscsictl COMMAND --help` for a command's flags.\n\nExit status:\n")
	for _, e := range exitCodes {
		fmt.Fprintf(w, "  %d  %s\n", e.code, e.meaning)
	}
	fmt.Fprintf(w, "\nCHAP secrets come from --chap-secret-file or $%s (and --chap-target-secret-file\nor $%s for mutual CHAP), never from an argument.\n",
		envCHAPSecret, envCHAPTargetSecret)
}

// andList joins words as "a, b and c".
func andList(w []string) string {
	if len(w) < 2 {
		return strings.Join(w, "")
	}
	return strings.Join(w[:len(w)-1], ", ") + " and " + w[len(w)-1]
}
