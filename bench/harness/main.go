//go:build linux

// Command harness measures goiscsi side by side with libiscsi on the same
// target, LogoutFromTarget at scale and the memory of idle sessions, and
// prints the results as Markdown tables (the ones in bench/README.md).
//
//	go run ./bench/harness                 # the full run (about 15 minutes on 2 cores)
//	go run ./bench/harness -smoke          # every row once, tiny durations (CI)
//	go run ./bench/harness -sections tgtd-io,mem-io -duration 5s -rounds 5
//
// Every figure is a median over rounds in which the initiators alternate on
// the same target, and every comparison is a ratio taken in the same run:
// the machines this runs on are shared and noisy.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/goiscsi/iscsi/bench/internal/benchkit"
)

// config is what a run does.
type config struct {
	// duration of each I/O run of iscsictl perf; iscsi-perf takes whole
	// seconds, at least 1.
	duration time.Duration
	rounds   int
	smoke    bool
	sections map[string]bool
	iscsictl string // built from the module when empty
	// tgtdLogoutN and memLogoutN are the session counts of the logout
	// scaling rows; memSessions the idle sessions of the memory rows.
	tgtdLogoutN []int
	memLogoutN  []int
	memLogoutN2 []int // with 2 connections per session
	memSessions int
	benchtime   string // of the micro-benchmarks
	lunBytes    int64
	// gomaxprocs, when positive, is the GOMAXPROCS of iscsictl perf.
	gomaxprocs int
	// progress receives a line per measurement; nil for none.
	progress io.Writer
}

// allSections lists the parts of a run, in order.
var allSections = []string{"tgtd-io", "mem-io", "logout", "memory", "micro"}

func main() {
	benchkit.MaybeServeChild()
	cfg, out, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "harness:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg.progress = os.Stderr
	var w io.Writer = os.Stdout
	var f *os.File
	if out != "" {
		if f, err = os.Create(out); err != nil {
			fmt.Fprintln(os.Stderr, "harness:", err)
			os.Exit(1)
		}
		w = io.MultiWriter(os.Stdout, f)
	}
	rep, err := run(ctx, cfg)
	rep.write(w)
	if f != nil {
		f.Close()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "harness:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (config, string, error) {
	fs := flag.NewFlagSet("harness", flag.ContinueOnError)
	d := fs.Duration("duration", 10*time.Second, "length of each I/O run")
	rounds := fs.Int("rounds", 3, "rounds per configuration; the initiators alternate in each")
	smoke := fs.Bool("smoke", false, "every row once with tiny durations and counts (CI)")
	sections := fs.String("sections", strings.Join(allSections, ","), "parts to run: "+strings.Join(allSections, ","))
	iscsictl := fs.String("iscsictl", "", "iscsictl binary (default: built from this module)")
	tgtdN := fs.String("tgtd-logout", "1,10,100,1000", "session counts of the logout rows on tgtd")
	memN := fs.String("mem-logout", "1,10,100,1000,10000", "session counts of the logout rows on the in-memory target")
	memN2 := fs.String("mem-logout2", "1,10,100,1000,5000,9000", "session counts of the logout rows of 2-connection sessions on the in-memory target")
	memS := fs.Int("mem-sessions", 1000, "idle sessions of the memory rows")
	benchtime := fs.String("benchtime", "1s", "-benchtime of the micro-benchmarks")
	procs := fs.Int("gomaxprocs", 0, "GOMAXPROCS of iscsictl perf (0: the Go default, one per CPU)")
	out := fs.String("o", "", "also write the report to this file")
	if err := fs.Parse(args); err != nil {
		return config{}, "", err
	}
	cfg := config{duration: *d, rounds: *rounds, smoke: *smoke, iscsictl: *iscsictl, memSessions: *memS,
		benchtime: *benchtime, lunBytes: 512 << 20, gomaxprocs: *procs, sections: map[string]bool{}}
	for _, s := range strings.Split(*sections, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		known := false
		for _, a := range allSections {
			known = known || a == s
		}
		if !known {
			return cfg, "", fmt.Errorf("unknown section %q; want some of %s", s, strings.Join(allSections, ","))
		}
		cfg.sections[s] = true
	}
	var err error
	if cfg.tgtdLogoutN, err = ints(*tgtdN); err != nil {
		return cfg, "", err
	}
	if cfg.memLogoutN, err = ints(*memN); err != nil {
		return cfg, "", err
	}
	if cfg.memLogoutN2, err = ints(*memN2); err != nil {
		return cfg, "", err
	}
	if cfg.smoke {
		cfg = smokeConfig(cfg)
	}
	if cfg.rounds < 1 || cfg.duration <= 0 {
		return cfg, "", fmt.Errorf("-rounds and -duration must be positive")
	}
	return cfg, *out, nil
}

// smokeConfig makes cfg a smoke run: every row, as little as possible of it.
func smokeConfig(cfg config) config {
	cfg.smoke = true
	cfg.duration = 300 * time.Millisecond
	cfg.rounds = 1
	cfg.tgtdLogoutN = []int{1, 10}
	cfg.memLogoutN = []int{1, 10}
	cfg.memLogoutN2 = []int{1, 10}
	cfg.memSessions = 10
	cfg.benchtime = "1x"
	cfg.lunBytes = 64 << 20
	return cfg
}

func ints(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("bad session count %q", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func (cfg *config) logf(format string, args ...any) {
	if cfg.progress != nil {
		fmt.Fprintf(cfg.progress, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
	}
}
