// Command iscsictl drives the goiscsi initiator from a shell: it discovers
// targets, logs in, does SCSI I/O, measures performance, logs out of a whole
// target with per-connection results, and decodes the captures it records.
//
// `iscsictl demo` runs the whole story against an embedded in-memory target,
// with no set-up. Run `iscsictl help` for the commands and exit codes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
)

// command is one subcommand.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, a *app, args []string) error
}

var commands = []command{
	{"demo", "log in, do I/O and log out of an embedded in-memory target, with optional faults", runDemo},
	{"discover", "list the targets a portal offers (SendTargets)", runDiscover},
	{"login", "log in (N sessions x M connections), print sessions and negotiated parameters, log out", runLogin},
	{"inquiry", "print the INQUIRY data of the target's LUNs", runInquiry},
	{"readcap", "print the capacity of the target's LUNs (READ CAPACITY 16)", runReadCap},
	{"read", "read blocks from a LUN to a file or as a hex dump", runRead},
	{"write", "write blocks to a LUN from a file or a pattern, optionally verifying", runWrite},
	{"perf", "measure IOPS, MB/s, latency percentiles and CPU time per I/O", runPerf},
	{"logout", "open sessions to a target (optionally with I/O running) and log out of all of them", runLogout},
	{"decode", "print the iSCSI PDUs of a pcap or pcapng file", runDecode},
	{"serve", "run the agent: it holds sessions, node records and metrics for the other commands", runServe},
	{"sessions", "list the sessions the agent holds", runSessions},
	{"node", "add, list, show or delete node records (the targets the agent logs in to at start)", runNode},
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

// run runs the command line args and returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitInvalidArg
	}
	name := args[0]
	switch name {
	case "help", "-h", "-help", "--help":
		if len(args) > 1 {
			return run(ctx, []string{args[1], "-h"}, stdout, stderr)
		}
		usage(stdout)
		return exitOK
	}
	for _, c := range commands {
		if c.name != name {
			continue
		}
		a := newApp(name, stdout, stderr)
		err := c.run(ctx, a, args[1:])
		a.finish()
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return a.exit(err)
	}
	fmt.Fprintf(stderr, "iscsictl: unknown command %q\n\n", name)
	usage(stderr)
	return exitInvalidArg
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "iscsictl: a pure-Go iSCSI initiator on the command line\n\nUsage: iscsictl COMMAND [flags]\n\nCommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\nRun `iscsictl COMMAND -h` for a command's flags.\n\nExit status:\n")
	for _, e := range exitCodes {
		fmt.Fprintf(w, "  %d  %s\n", e.code, e.meaning)
	}
	fmt.Fprintf(w, "\nCHAP secrets come from --chap-secret-file or $%s (and --chap-target-secret-file\nor $%s for mutual CHAP), never from an argument.\n",
		envCHAPSecret, envCHAPTargetSecret)
}
