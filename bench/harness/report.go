//go:build linux

package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// median returns the median of the values f picks from the samples without
// an error, and how many there were.
func median(ss []sample, f func(sample) float64) (float64, int) {
	var v []float64
	for _, s := range ss {
		if s.Err == nil {
			v = append(v, f(s))
		}
	}
	return medianOf(v), len(v)
}

func medianOf(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

func medianDur(d []time.Duration) time.Duration {
	v := make([]float64, len(d))
	for i, x := range d {
		v[i] = float64(x)
	}
	return time.Duration(medianOf(v))
}

func firstErr(ss []sample) error {
	for _, s := range ss {
		if s.Err != nil {
			return s.Err
		}
	}
	return nil
}

var (
	iops  = func(s sample) float64 { return s.IOPS }
	mibps = func(s sample) float64 { return s.MiBps }
	cpuus = func(s sample) float64 { return s.CPUus }
	tcpu  = func(s sample) float64 { return s.TargetCPU }
)

func ratio(a, b float64) string {
	if a == 0 || b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", a/b)
}

// ioTable prints one table of I/O rows, the peer's figures next to ours;
// target names the target's CPU column, short the peer within it.
func ioTable(p func(string, ...any), title, peer, target, short string, rows []*ioRow) {
	if len(rows) == 0 {
		return
	}
	p("#### %s", title)
	p("")
	p("| Configuration | %[1]s IOPS | goiscsi IOPS | IOPS ratio | %[1]s MiB/s | goiscsi MiB/s | %[1]s CPU µs/IO | goiscsi CPU µs/IO | CPU ratio | %[2]s CPU %% (%[3]s / goiscsi) | Notes |",
		peer, target, short)
	p("|---|---|---|---|---|---|---|---|---|---|---|")
	for _, row := range rows {
		p("%s", ioRowLine(row, peer))
	}
	p("")
}

// ioRowLine is one row of an I/O table: the peer's medians, ours, the
// ratios.
func ioRowLine(r *ioRow, peer string) string {
	if err := firstErr(r.ours); err != nil {
		return fmt.Sprintf("| %s | error: %s |||||||||", r.cfg.Name, oneLine(err.Error()))
	}
	if err := firstErr(r.peer); err != nil {
		return fmt.Sprintf("| %s | %s error: %s |||||||||", r.cfg.Name, peer, oneLine(err.Error()))
	}
	oI, _ := median(r.ours, iops)
	oM, _ := median(r.ours, mibps)
	oC, _ := median(r.ours, cpuus)
	oT, _ := median(r.ours, tcpu)
	if r.cfg.PeerNA != "" || len(r.peer) == 0 {
		why := r.cfg.PeerNA
		if why == "" {
			why = "not run"
		}
		return fmt.Sprintf("| %s | n/a | %.0f | – | n/a | %.1f | n/a | %.2f | – | – / %.0f | %s |",
			r.cfg.Name, oI, oM, oC, oT, why)
	}
	pI, _ := median(r.peer, iops)
	pM, _ := median(r.peer, mibps)
	pC, _ := median(r.peer, cpuus)
	pT, _ := median(r.peer, tcpu)
	// The runs' spread of CPU per I/O goes with the medians: at QD1 the
	// peer's is bimodal on this machine (10.6 to 38.8 µs between runs of
	// one sitting), and a median of three then says little on its own.
	pLo, pHi := spread(r.peer, cpuus)
	oLo, oHi := spread(r.ours, cpuus)
	return fmt.Sprintf("| %s | %.0f | %.0f | **%s** | %.1f | %.1f | %.2f | %.2f | **%s** | %.0f / %.0f | %d+%d runs; CPU µs/IO %.2f–%.2f / %.2f–%.2f |",
		r.cfg.Name, pI, oI, ratio(oI, pI), pM, oM, pC, oC, ratio(oC, pC), pT, oT, len(r.peer), len(r.ours), pLo, pHi, oLo, oHi)
}

// spread returns the least and the greatest of the values f picks from
// the samples without an error.
func spread(ss []sample, f func(sample) float64) (lo, hi float64) {
	first := true
	for _, s := range ss {
		if s.Err != nil {
			continue
		}
		v := f(s)
		if first || v < lo {
			lo = v
		}
		if first || v > hi {
			hi = v
		}
		first = false
	}
	return lo, hi
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	s = strings.ReplaceAll(s, "|", "/")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// goal is one of the targets of issue 9, checked against the figures.
type goal struct {
	what string
	have string
	met  bool
	ok   bool // the figure was measured
}

func (r *report) findIO(rows []*ioRow, name string) *ioRow {
	for _, x := range rows {
		if x.cfg.Name == name && firstErr(x.ours) == nil && firstErr(x.peer) == nil && len(x.ours) > 0 {
			return x
		}
	}
	return nil
}

func (r *report) findLogout(target string, n, conns int) *logoutRow {
	for _, x := range r.logouts {
		if x.target == target && x.sessions == n && x.conns == conns && x.err == nil && len(x.walls) > 0 {
			return x
		}
	}
	return nil
}

func (r *report) goals() []goal {
	var gs []goal
	ioRatio := func(name string, want float64, what string) {
		g := goal{what: what}
		if x := r.findIO(r.tgtdIO, name); x != nil && len(x.peer) > 0 {
			o, _ := median(x.ours, iops)
			p, _ := median(x.peer, iops)
			g.ok, g.met, g.have = true, o/p >= want, fmt.Sprintf("%.2f× (%.0f / %.0f IOPS)", o/p, o, p)
		}
		gs = append(gs, g)
	}
	ioRatio("4k-randread-qd1", 1.15, "4 KiB random read QD1 on tgtd: ≥ 1.15× libiscsi's IOPS")
	ioRatio("4k-randread-qd8", 1.0, "4 KiB random read QD8 on tgtd: ≥ 1.0× libiscsi's IOPS")
	ioRatio("4k-randread-qd32", 1.0, "4 KiB random read QD32 on tgtd: ≥ 1.0× libiscsi's IOPS")
	g := goal{what: "4 KiB random read QD32 on tgtd: initiator CPU per I/O ≤ 0.8× libiscsi's"}
	if x := r.findIO(r.tgtdIO, "4k-randread-qd32"); x != nil && len(x.peer) > 0 {
		o, _ := median(x.ours, cpuus)
		p, _ := median(x.peer, cpuus)
		g.ok, g.met, g.have = true, o/p <= 0.8, fmt.Sprintf("%.2f× (%.2f / %.2f µs)", o/p, o, p)
	}
	gs = append(gs, g)
	g = goal{what: "1 MiB sequential read QD8 on the in-memory target: ≥ 80 % of raw loopback TCP"}
	if x := r.findIO(r.memIO, "mem-1m-seqread-qd8"); x != nil && len(x.peer) > 0 {
		o, _ := median(x.ours, mibps)
		p, _ := median(x.peer, mibps)
		g.ok, g.met, g.have = true, o/p >= 0.8, fmt.Sprintf("%.0f %% (%.0f / %.0f MiB/s)", 100*o/p, o, p)
	}
	gs = append(gs, g)
	wall := func(target string, n, conns int, limit time.Duration, what string) {
		g := goal{what: what}
		if x := r.findLogout(target, n, conns); x != nil {
			m := medianDur(x.walls)
			g.ok, g.met, g.have = true, m <= limit, m.Round(time.Millisecond/10).String()
		}
		gs = append(gs, g)
	}
	wall("tgtd", 1000, 1, 250*time.Millisecond, "LogoutFromTarget of 1,000 sessions on tgtd ≤ 250 ms")
	wall("in-memory", 10000, 1, time.Second, "LogoutFromTarget of 10,000 sessions on the in-memory target ≤ 1 s")
	g = goal{what: "T(1000)/T(1) on tgtd ≤ 20"}
	if a, b := r.findLogout("tgtd", 1000, 1), r.findLogout("tgtd", 1, 1); a != nil && b != nil {
		q := float64(medianDur(a.walls)) / float64(medianDur(b.walls))
		g.ok, g.met, g.have = true, q <= 20, fmt.Sprintf("%.1f", q)
	}
	gs = append(gs, g)
	g = goal{what: "≤ 16 KiB (heap + goroutine stacks) per idle single-connection session"}
	for _, m := range r.memory {
		if m.err == nil && m.per.N >= 1000 {
			t := m.per.Total()
			g.ok, g.met = true, t <= 16<<10
			g.have += fmt.Sprintf("%.1f KiB on %s; ", t/1024, m.target)
			if t > 16<<10 {
				g.met = false
			}
		}
	}
	g.have = strings.TrimSuffix(g.have, "; ")
	gs = append(gs, g)
	return gs
}

// write prints the report as Markdown.
func (r *report) write(w io.Writer) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	end := r.end
	if end.IsZero() {
		end = time.Now()
	}
	mode := ""
	if r.cfg.smoke {
		mode = " (smoke mode: tiny durations, figures meaningless)"
	}
	p("### Results of %s%s", r.start.Format("2006-01-02 15:04 MST"), mode)
	p("")
	p("- Machine: %s.", strings.Join(r.machine, "; "))
	p("- Load average (1, 5, 15 min) at the start: %s; at the end: %s. The run took %s.", r.loadStart, r.loadEnd, end.Sub(r.start).Round(time.Second))
	p("- Each I/O figure is the median of %d rounds of %s (iscsi-perf: -t %d); in each round the two initiators run one after the other on the same target, alternating which goes first. CPU per I/O is the initiator process's user+sys time from its rusage (os.ProcessState), over the I/Os it did; target CPU is the target process's /proc/PID/stat time over the run's wall time, in %% of one core.",
		r.cfg.rounds, r.cfg.duration, libiscsiSeconds(r.cfg.duration))
	for _, n := range r.notes {
		p("- %s.", strings.TrimSuffix(n, "."))
	}
	p("")
	ioTable(p, "I/O on tgtd: libiscsi's iscsi-perf against `iscsictl perf`", "libiscsi", "tgtd", "libiscsi", r.tgtdIO)
	ioTable(p, "I/O on the in-memory target: raw loopback TCP (same request/response shape, one connection) against `iscsictl perf`",
		"raw TCP", "target", "raw", r.memIO)
	if len(r.memory) > 0 {
		p("#### Memory per idle session (initiator process, after GC; each session one connection)")
		p("")
		p("| Target | Sessions | Heap B/session | Goroutine stacks B/session | Total KiB/session | Goroutines/session | Target's RSS growth B/session |")
		p("|---|---|---|---|---|---|---|")
		for _, m := range r.memory {
			if m.err != nil {
				p("| memory-%s | error: %s ||||||", m.target, oneLine(m.err.Error()))
				continue
			}
			rss := "–"
			if m.targetRSS > 0 {
				rss = fmt.Sprintf("%.0f", m.targetRSS)
			}
			p("| memory-%s | %d | %.0f | %.0f | **%.1f** | %.2f | %s |", m.target, m.per.N, m.per.HeapBytes, m.per.StackBytes,
				m.per.Total()/1024, m.per.Goroutines, rss)
		}
		p("")
	}
	if len(r.logouts) > 0 {
		p("#### LogoutFromTarget: wall time from the call to the end of Wait, median of %d rounds", r.cfg.rounds)
		p("")
		p("| Row | Target | Sessions × connections | T(n) | T(n)/T(1) | Rounds (ms) | Initiator CPU | Target CPU | Target's view afterwards |")
		p("|---|---|---|---|---|---|---|---|---|")
		for _, l := range r.logouts {
			name := fmt.Sprintf("logout-%s-%dx%d", strings.ReplaceAll(l.target, "-", ""), l.sessions, l.conns)
			if l.skipped != "" {
				p("| %s | %s | %d × %d | not run: %s ||||||", name, l.target, l.sessions, l.conns, l.skipped)
				continue
			}
			if l.err != nil {
				p("| %s | %s | %d × %d | error: %s ||||||", name, l.target, l.sessions, l.conns, oneLine(l.err.Error()))
				continue
			}
			m := medianDur(l.walls)
			rel := "–"
			if one := r.findLogout(l.target, 1, l.conns); one != nil {
				rel = fmt.Sprintf("%.1f", float64(m)/float64(medianDur(one.walls)))
			}
			var rs []string
			for _, x := range l.walls {
				rs = append(rs, fmt.Sprintf("%.1f", float64(x)/1e6))
			}
			check := l.check
			if check == "" {
				check = "–"
			}
			p("| %s | %s | %d × %d | **%s** | %s | %s | %s | %s | %s |", name, l.target, l.sessions, l.conns,
				m.Round(time.Millisecond/10), rel, strings.Join(rs, ", "), durCell(l.selfCPU), durCell(l.targetCPU), check)
		}
		p("")
	}
	if len(r.micro) > 0 {
		p("#### Micro-benchmarks (`%s`)", r.commandFor("go test"))
		p("")
		p("| Benchmark | ns/op | MB/s | B/op | allocs/op |")
		p("|---|---|---|---|---|")
		for _, m := range r.micro {
			p("| %s | %s | %s | %s | %s |", m.name, m.nsOp, dash(m.mbs), m.bytesOp, m.allocsOp)
		}
		p("")
	}
	if gs := r.goals(); len(gs) > 0 && !r.cfg.smoke {
		p("#### Targets of issue 9")
		p("")
		p("| Target | Measured | Met |")
		p("|---|---|---|")
		for _, g := range gs {
			met := "no"
			switch {
			case !g.ok:
				met, g.have = "not measured", "–"
			case g.met:
				met = "yes"
			}
			p("| %s | %s | %s |", g.what, g.have, met)
		}
		p("")
	}
	if len(r.errs) > 0 {
		p("#### Errors")
		p("")
		for _, e := range r.errs {
			p("- error: %s", oneLine(e))
		}
		p("")
	}
}

func (r *report) commandFor(prefix string) string {
	for _, c := range r.commands {
		if strings.HasPrefix(c, prefix) {
			return c
		}
	}
	return prefix
}

// durCell is the median of d, or a dash.
func durCell(d []time.Duration) string {
	if len(d) == 0 {
		return "–"
	}
	return medianDur(d).Round(time.Millisecond / 10).String()
}

func dash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}
