package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/goiscsi/iscsi/iscsitest"
	"github.com/goiscsi/iscsi/pdu"
	"github.com/goiscsi/iscsi/session"
	"github.com/spf13/pflag"
)

// demoTarget is the name of the demo's in-memory target.
const demoTarget = "iqn.2026-01.org.goiscsi:demo"

// faults are the logout faults the demo can inject, by flag value.
var faults = map[string]struct {
	describe string
	hook     func(m iscsitest.Match) iscsitest.Hook
}{
	"cid-not-found": {"answer Logout Requests with response 1 (CID not found)",
		func(m iscsitest.Match) iscsitest.Hook { return iscsitest.FailLogout(m, pdu.LogoutCIDNotFound, 0, 0) }},
	"recovery-unsupported": {"answer Logout Requests with response 2 (connection recovery not supported)",
		func(m iscsitest.Match) iscsitest.Hook {
			return iscsitest.FailLogout(m, pdu.LogoutRecoveryUnsupported, 0, 0)
		}},
	"cleanup-failed": {"answer Logout Requests with response 3 (cleanup failed), Time2Wait 2, Time2Retain 20",
		func(m iscsitest.Match) iscsitest.Hook { return iscsitest.FailLogout(m, pdu.LogoutCleanupFailed, 2, 20) }},
	"no-response": {"never answer Logout Requests",
		func(m iscsitest.Match) iscsitest.Hook { return iscsitest.NoLogoutResponse(m) }},
	"reset": {"reset the connection (RST) on a Logout Request",
		func(m iscsitest.Match) iscsitest.Hook { return iscsitest.ResetOnLogout(m) }},
	"close": {"close the connection (FIN) on a Logout Request, without a response",
		func(m iscsitest.Match) iscsitest.Hook { return iscsitest.CloseOnLogout(m) }},
	"reject": {"reject Logout Requests (Reject, reason: command not supported)",
		func(m iscsitest.Match) iscsitest.Hook {
			return iscsitest.RejectLogout(m, pdu.RejectCommandNotSupported)
		}},
}

func faultNames() string {
	var n []string
	for k := range faults {
		n = append(n, k)
	}
	sort.Strings(n)
	return strings.Join(n, ", ")
}

// demoISID is session i's ISID: random format (T=10b) with the session's
// number, so that a fault can pick sessions before they log in.
func demoISID(i int) [6]byte {
	return [6]byte{0x80, 0x00, 0x1d, 0xe0, byte(i >> 8), byte(i)}
}

// runDemo is the whole story with no set-up: an in-memory target, N sessions
// of M connections, writes read back and compared, and a logout of the
// target with a result per connection and the outcome.
func defDemo(a *app, fs *pflag.FlagSet) runFunc {
	var lo logoutOptions
	var lf ioLoadFlags
	a.pcapFlag(fs)
	n := fs.IntP("sessions", "n", 4, "sessions to log in")
	m := fs.IntP("conns", "c", 2, "connections per session (MC/S)")
	failN := fs.Int("fail-sessions", 0, "how many sessions the target fails the logout of (the first K)")
	fault := fs.String("fault", "cleanup-failed", "the fault of --fail-sessions: "+faultNames())
	size := fs.Int("size", 256<<10, "bytes each session writes, reads back and compares")
	lo.registerNamed(fs, "logout-timeout", 2*time.Second)
	lf.register(fs)
	return func(ctx context.Context, _ []string) error {
		return runDemo(ctx, a, &lo, &lf, *n, *m, *failN, *fault, *size)
	}
}

func runDemo(ctx context.Context, a *app, lo *logoutOptions, lfp *ioLoadFlags, nv, mv, failNv int, faultv string, sizev int) error {
	lf := *lfp
	n, m, failN, fault, size := &nv, &mv, &failNv, &faultv, &sizev
	switch {
	case *n < 1 || *m < 1 || *n > 1024 || *m > 64:
		return invalidArgf("--sessions must be 1 to 1024 and --conns 1 to 64")
	case *failN < 0 || *failN > *n:
		return invalidArgf("--fail-sessions must be 0 to --sessions (%d)", *n)
	case *size < iscsitest.BlockSize || *size%iscsitest.BlockSize != 0 || *size > 8<<20:
		return invalidArgf("--size must be a multiple of %d bytes, at most 8 MiB", iscsitest.BlockSize)
	}
	f, ok := faults[*fault]
	if !ok {
		return invalidArgf("--fault %q: want one of %s", *fault, faultNames())
	}
	opts, err := lo.options()
	if err != nil {
		return err
	}

	faulty := map[[6]byte]bool{}
	for i := range *failN {
		faulty[demoISID(i)] = true
	}
	var hook iscsitest.Hook
	if *failN > 0 {
		hook = f.hook(func(ev *iscsitest.Event) bool { return faulty[ev.ISID] })
	}
	lunSize := int64(max(64<<20, *n**size))
	t := iscsitest.NewTarget(iscsitest.Config{Name: demoTarget, LUNs: []int64{lunSize}, MaxConnections: max(4, *m),
		QueueDepth: 128, Hook: hook, Logger: a.log.Named("target")})
	// Closed after the initiator, which finish closes first.
	a.closers = append(a.closers, t.Close)

	a.printf("In-memory target %s at %s: one LUN of %s\n", demoTarget, t.Addr(), humanBytes(uint64(lunSize)))
	if *failN > 0 {
		a.printf("Fault: the target will %s for %d of %d sessions\n", f.describe, *failN, *n)
	}
	tf := targetFlags{portal: t.Addr(), target: demoTarget, loginTimeout: 15 * time.Second, conns: *m, urlLUN: -1}
	c, err := a.dial(ctx, &tf, targetRequired)
	if err != nil {
		return err
	}
	ss, err := c.login(ctx, *n, *m, demoISID)
	if err != nil {
		c.quietLogout(ctx)
		return err
	}
	// In the initiator's table order, which the logout's result follows.
	table := c.in.Sessions(demoTarget)
	infos := make([]sessionInfo, len(table))
	for i, s := range table {
		infos[i] = describeSession(s)
	}
	if !a.json {
		a.printf("\nLogged in: %d sessions x %d connections\n", *n, *m)
		tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SESSION\tTSIH\tISID\tCIDS\tFAULT")
		for i, s := range infos {
			fmt.Fprintf(tw, "%d\t0x%04x\t%s\t%v\t%s\n", i+1, s.TSIH, s.ISID, s.Connections, mark(faulty[table[i].ISID()], *fault))
		}
		tw.Flush()
	}

	// Each session writes its own region, reads it back and compares, and
	// the target's memory is compared too.
	if err := demoIO(ctx, t, ss, *size); err != nil {
		c.quietLogout(ctx)
		return err
	}
	a.printf("\nI/O: each session wrote %s over its %d connections, read it back and compared it (and the target's memory): verified\n",
		humanBytes(uint64(*size)), *m)

	var load *ioLoad
	if lf.enabled {
		if load, err = startIOLoad(ctx, a, ss, lf); err != nil {
			c.quietLogout(ctx)
			return err
		}
		defer load.stop()
		load.waitStarted(ctx, time.Second)
		a.printf("I/O running during the logout: %s, %d in flight per session\n", lf.describe(), lf.depth)
	}

	op, err := c.in.LogoutFromTargetWith(demoTarget, opts)
	if err != nil {
		return err
	}
	res := a.waitLogout(ctx, op, *n**m)
	extra := map[string]any{
		"target":   map[string]any{"name": demoTarget, "addr": t.Addr(), "lunBytes": lunSize},
		"sessions": infos,
		"verified": true,
		"fault":    map[string]any{"sessions": *failN, "kind": *fault},
	}
	if load != nil {
		r := load.stop()
		if !a.json {
			r.print(a)
		}
		extra["io"] = r
	}
	return a.reportLogout(&res, opts.Strategy, extra)
}

// demoIO writes size bytes per session in chunks spread over its
// connections, reads them back and compares them with what was written and
// with the target's memory.
func demoIO(ctx context.Context, t *iscsitest.Target, ss []*session.Session, size int) error {
	const chunk = 64 << 10
	errs := make([]error, len(ss))
	datas := make([][]byte, len(ss))
	var wg sync.WaitGroup
	for i, s := range ss {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := make([]byte, size)
			rand.Read(data)
			datas[i] = data
			lba := uint64(i*size) / iscsitest.BlockSize
			for off := 0; off < size; off += chunk {
				end := min(off+chunk, size)
				if err := s.Write(ctx, 0, lba+uint64(off/iscsitest.BlockSize), iscsitest.BlockSize, data[off:end]); err != nil {
					errs[i] = &stepError{step: fmt.Sprintf("session %d: WRITE", i+1), err: err}
					return
				}
			}
			got := make([]byte, size)
			for off := 0; off < size; off += chunk {
				end := min(off+chunk, size)
				if err := s.Read(ctx, 0, lba+uint64(off/iscsitest.BlockSize), iscsitest.BlockSize, got[off:end]); err != nil {
					errs[i] = &stepError{step: fmt.Sprintf("session %d: READ", i+1), err: err}
					return
				}
			}
			if j := firstDiff(data, got); j >= 0 {
				errs[i] = fmt.Errorf("session %d: the data read back differs from the data written at byte %d", i+1, j)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	mem := t.LUNData(0)
	for i, data := range datas {
		if !bytes.Equal(mem[i*size:(i+1)*size], data) {
			return fmt.Errorf("session %d: the target's memory differs from the data written", i+1)
		}
	}
	return nil
}
