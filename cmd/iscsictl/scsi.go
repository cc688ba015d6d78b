package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"text/tabwriter"

	"github.com/goiscsi/iscsi/session"
	"github.com/spf13/pflag"
)

// peripheralTypes names the SCSI peripheral device types seen on iSCSI.
var peripheralTypes = map[int]string{0x00: "disk", 0x01: "tape", 0x05: "cd/dvd", 0x08: "changer", 0x0c: "controller", 0x0d: "enclosure", 0x1f: "unknown"}

func peripheralName(t int) string {
	if n, ok := peripheralTypes[t]; ok {
		return n
	}
	return fmt.Sprintf("type 0x%02x", t)
}

// luns returns the LUNs a command works on: lun itself, or with lun < 0
// every LUN the target reports.
func luns(ctx context.Context, s *session.Session, lun int) ([]int, error) {
	if lun >= 0 {
		return []int{lun}, nil
	}
	ls, err := s.ReportLUNs(ctx)
	if err != nil {
		return nil, &stepError{step: "REPORT LUNS", err: err}
	}
	if len(ls) == 0 {
		return nil, errors.New("the target reports no LUN")
	}
	return ls, nil
}

// diskLUN returns lun, or with lun < 0 the first LUN that is a disk
// (tgtd's LUN 0 is its controller).
func diskLUN(ctx context.Context, s *session.Session, lun int) (int, error) {
	if lun >= 0 {
		return lun, nil
	}
	ls, err := luns(ctx, s, lun)
	if err != nil {
		return 0, err
	}
	for _, l := range ls {
		inq, err := s.Inquiry(ctx, l)
		if err == nil && inq.PeripheralType == 0 {
			return l, nil
		}
	}
	return 0, fmt.Errorf("no disk among the target's LUNs %v; choose one with --lun", ls)
}

func defInquiry(a *app, fs *pflag.FlagSet) runFunc {
	var tf targetFlags
	tf.register(fs, a)
	lun := fs.IntP("lun", "l", -1, "logical unit; -1 means every LUN the target reports")
	return func(ctx context.Context, pos []string) error {
		if err := tf.fromURL(a, pos, targetAuto); err != nil {
			return err
		}
		if err := tf.lunFrom(lun); err != nil {
			return err
		}
		return runInquiry(ctx, a, &tf, lun)
	}
}

func runInquiry(ctx context.Context, a *app, tf *targetFlags, lun *int) error {
	type inqJSON struct {
		LUN            int    `json:"lun"`
		PeripheralType int    `json:"peripheralType"`
		Type           string `json:"type"`
		Vendor         string `json:"vendor"`
		Product        string `json:"product"`
		Revision       string `json:"revision"`
	}
	var out []inqJSON
	err := a.withSession(ctx, tf, 1, func(s *session.Session) error {
		ls, err := luns(ctx, s, *lun)
		if err != nil {
			return err
		}
		for _, l := range ls {
			inq, err := s.Inquiry(ctx, l)
			if err != nil {
				return &stepError{step: "INQUIRY of LUN " + strconv.Itoa(l), err: err}
			}
			out = append(out, inqJSON{LUN: l, PeripheralType: inq.PeripheralType, Type: peripheralName(inq.PeripheralType),
				Vendor: inq.Vendor, Product: inq.Product, Revision: inq.Revision})
		}
		return nil
	})
	if err != nil {
		return err
	}
	if a.json {
		a.printJSON(map[string]any{"command": "inquiry", "target": tf.target, "luns": out})
		return nil
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LUN\tTYPE\tVENDOR\tPRODUCT\tREVISION")
	for _, q := range out {
		// The strings are the target's; a tab in them would break the
		// columns too.
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", q.LUN, q.Type, safe(q.Vendor), safe(q.Product), safe(q.Revision))
	}
	return tw.Flush()
}

func defReadCap(a *app, fs *pflag.FlagSet) runFunc {
	var tf targetFlags
	tf.register(fs, a)
	lun := fs.IntP("lun", "l", -1, "logical unit; -1 means every disk LUN the target reports")
	return func(ctx context.Context, pos []string) error {
		if err := tf.fromURL(a, pos, targetAuto); err != nil {
			return err
		}
		if err := tf.lunFrom(lun); err != nil {
			return err
		}
		return runReadCap(ctx, a, &tf, lun)
	}
}

func runReadCap(ctx context.Context, a *app, tf *targetFlags, lun *int) error {
	type capJSON struct {
		LUN       int    `json:"lun"`
		Blocks    uint64 `json:"blocks"`
		BlockSize uint32 `json:"blockSize"`
		Bytes     uint64 `json:"bytes"`
	}
	var out []capJSON
	err := a.withSession(ctx, tf, 1, func(s *session.Session) error {
		ls, err := luns(ctx, s, *lun)
		if err != nil {
			return err
		}
		for _, l := range ls {
			c, err := s.ReadCapacity(ctx, l)
			if err != nil {
				var se *session.SCSIError
				if *lun < 0 && errors.As(err, &se) {
					continue // a controller LUN has no capacity
				}
				return &stepError{step: "READ CAPACITY of LUN " + strconv.Itoa(l), err: err}
			}
			out = append(out, capJSON{LUN: l, Blocks: c.Blocks, BlockSize: c.BlockSize, Bytes: c.Bytes()})
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(out) == 0 {
		// Every LUN refused READ CAPACITY: controllers, enclosures, no
		// disk. An empty table with status 0 would say nothing was wrong.
		return &exitErr{code: exitError, msg: fmt.Sprintf("target %s has no disk LUN: none of its LUNs answers READ CAPACITY (LUN 0 of tgtd is its controller); a target with no backing store has nothing to read", tf.target)}
	}
	if a.json {
		a.printJSON(map[string]any{"command": "readcap", "target": tf.target, "luns": out})
		return nil
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LUN\tBLOCKS\tBLOCK SIZE\tBYTES")
	for _, c := range out {
		fmt.Fprintf(tw, "%d\t%d\t%d\t%d (%s)\n", c.LUN, c.Blocks, c.BlockSize, c.Bytes, humanBytes(c.Bytes))
	}
	return tw.Flush()
}

func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// ioFlags are the flags of read and write.
type ioFlags struct {
	lun    int
	lba    uint64
	blocks int
}

func (f *ioFlags) register(fs *pflag.FlagSet) {
	fs.IntVarP(&f.lun, "lun", "l", -1, "logical unit; -1 means the first disk the target reports")
	fs.Uint64Var(&f.lba, "lba", 0, "first logical block")
	fs.IntVar(&f.blocks, "blocks", 0, "number of blocks")
}

// maxCommand is the most one SCSI command of read and write moves: a
// larger transfer is split into commands of this size, below the maximum
// transfer length of the targets met (8 MiB for tgtd's and iscsitest's
// defaults, LIO's 8 MiB), and a unit of the progress bar.
const maxCommand = 4 << 20

// maxTransfer bounds a whole read or write of the command line: the data
// is held in memory.
const maxTransfer = 1 << 30

// transfer runs op on the blocks from lba in commands of at most
// maxCommand bytes, advancing the progress bar; it returns how many
// commands it sent.
func transfer(buf []byte, bs int, lba uint64, bar *progress, op func(lba uint64, chunk []byte) error) (int, error) {
	per := max(maxCommand/bs, 1) * bs
	n := 0
	for off := 0; off < len(buf); off += per {
		end := min(off+per, len(buf))
		if err := op(lba+uint64(off/bs), buf[off:end]); err != nil {
			return n, err
		}
		n++
		bar.add(int64(end - off))
	}
	return n, nil
}

// prepare finds the LUN and its block size and checks the range.
func (f *ioFlags) prepare(ctx context.Context, s *session.Session, blocks int) (lun int, bs int, err error) {
	lun, err = diskLUN(ctx, s, f.lun)
	if err != nil {
		return 0, 0, err
	}
	c, err := s.ReadCapacity(ctx, lun)
	if err != nil {
		return 0, 0, &stepError{step: "READ CAPACITY of LUN " + strconv.Itoa(lun), err: err}
	}
	bs = int(c.BlockSize)
	switch {
	case blocks <= 0:
		return 0, 0, invalidArgf("--blocks must be at least 1")
	case blocks > maxTransfer/bs: // blocks*bs could overflow
		return 0, 0, invalidArgf("%d blocks of %d bytes is more than the %d GiB one read or write moves", blocks, bs, maxTransfer>>30)
	case f.lba >= c.Blocks || uint64(blocks) > c.Blocks-f.lba:
		return 0, 0, invalidArgf("blocks %d to %d are past the end of LUN %d (%d blocks)", f.lba, f.lba+uint64(blocks)-1, lun, c.Blocks)
	}
	return lun, bs, nil
}

func defRead(a *app, fs *pflag.FlagSet) runFunc {
	var tf targetFlags
	var f ioFlags
	tf.register(fs, a)
	f.register(fs)
	tf.recoveryFlag(fs)
	out := fs.StringP("out", "o", "", "write the data to this `file` (\"-\" for stdout); else print a hex dump")
	return func(ctx context.Context, pos []string) error {
		if err := tf.fromURL(a, pos, targetAuto); err != nil {
			return err
		}
		if err := tf.lunFrom(&f.lun); err != nil {
			return err
		}
		return runRead(ctx, a, &tf, &f, out)
	}
}

func runRead(ctx context.Context, a *app, tf *targetFlags, fp *ioFlags, out *string) error {
	f := *fp
	if f.blocks <= 0 {
		return invalidArgf("--blocks must be at least 1")
	}
	var data []byte
	var lun, bs, commands int
	var rc recoveryCounts
	err := a.withSession(ctx, tf, 1, func(s *session.Session) error {
		defer func() { rc = countRecovery(s) }()
		var err error
		lun, bs, err = f.prepare(ctx, s, f.blocks)
		if err != nil {
			return err
		}
		data = make([]byte, f.blocks*bs)
		bar := a.newProgress(int64(len(data)), "reading", true)
		defer bar.finish()
		commands, err = transfer(data, bs, f.lba, bar, func(lba uint64, chunk []byte) error {
			return s.Read(ctx, lun, lba, bs, chunk)
		})
		if err != nil {
			return &stepError{step: "READ", err: err}
		}
		return nil
	})
	if err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	switch {
	case *out == "-":
		_, err = a.stdout.Write(data)
		return err
	case *out != "":
		if err := os.WriteFile(*out, data, 0o644); err != nil {
			return err
		}
	}
	if a.json {
		a.printJSON(map[string]any{"command": "read", "target": tf.target, "lun": lun, "lba": f.lba, "blocks": f.blocks,
			"blockSize": bs, "bytes": len(data), "sha256": hex.EncodeToString(sum[:]), "out": *out, "commands": commands,
			"recovery": rc})
		return nil
	}
	if *out != "" {
		a.printf("read %d blocks (%d bytes) at LBA %d of LUN %d into %s, sha256 %x\n", f.blocks, len(data), f.lba, lun, *out, sum)
		return nil
	}
	d := hex.Dumper(a.stdout)
	d.Write(data)
	return d.Close()
}

func defWrite(a *app, fs *pflag.FlagSet) runFunc {
	var tf targetFlags
	var f ioFlags
	tf.register(fs, a)
	f.register(fs)
	tf.recoveryFlag(fs)
	in := fs.StringP("in", "i", "", "write the contents of this `file` (a whole number of blocks; \"-\" for stdin)")
	fill := fs.Int("fill", 0, "with --blocks: fill the blocks with this byte value")
	random := fs.Bool("random", false, "with --blocks: write random data")
	verify := fs.Bool("verify", false, "read the blocks back and compare")
	return func(ctx context.Context, pos []string) error {
		if err := tf.fromURL(a, pos, targetAuto); err != nil {
			return err
		}
		if err := tf.lunFrom(&f.lun); err != nil {
			return err
		}
		return runWrite(ctx, a, &tf, &f, *in, *fill, *random, *verify)
	}
}

func runWrite(ctx context.Context, a *app, tf *targetFlags, fp *ioFlags, inv string, fillv int, randomv, verifyv bool) error {
	f := *fp
	in, fill, random, verify := &inv, &fillv, &randomv, &verifyv
	var src []byte
	switch {
	case *in != "" && f.blocks != 0:
		return invalidArgf("give either --in or --blocks")
	case *in == "-":
		b, err := io.ReadAll(io.LimitReader(os.Stdin, maxTransfer+1))
		if err != nil {
			return err
		}
		src = b
	case *in != "":
		b, err := os.ReadFile(*in)
		if err != nil {
			return invalidArgf("--in: %v", err)
		}
		src = b
	case f.blocks <= 0:
		return invalidArgf("give --in FILE or --blocks N")
	case *fill < 0 || *fill > 255:
		return invalidArgf("--fill must be a byte value, 0 to 255")
	}
	var lun, bs, commands int
	var rc recoveryCounts
	err := a.withSession(ctx, tf, 1, func(s *session.Session) error {
		defer func() { rc = countRecovery(s) }()
		// The block size is known only now.
		probe, err := diskLUN(ctx, s, f.lun)
		if err != nil {
			return err
		}
		f.lun = probe
		c, err := s.ReadCapacity(ctx, f.lun)
		if err != nil {
			return &stepError{step: "READ CAPACITY of LUN " + strconv.Itoa(f.lun), err: err}
		}
		blockSize := int(c.BlockSize)
		if src != nil {
			if len(src) == 0 || len(src)%blockSize != 0 {
				return invalidArgf("the input is %d bytes, not a whole number of %d-byte blocks", len(src), blockSize)
			}
			f.blocks = len(src) / blockSize
		}
		lun, bs, err = f.prepare(ctx, s, f.blocks)
		if err != nil {
			return err
		}
		if src == nil {
			src = make([]byte, f.blocks*bs)
			if *random {
				rand.Read(src)
			} else if *fill != 0 {
				for i := range src {
					src[i] = byte(*fill)
				}
			}
		}
		bar := a.newProgress(int64(len(src)), "writing", true)
		commands, err = transfer(src, bs, f.lba, bar, func(lba uint64, chunk []byte) error {
			return s.Write(ctx, lun, lba, bs, chunk)
		})
		bar.finish()
		if err != nil {
			return &stepError{step: "WRITE", err: err}
		}
		if !*verify {
			return nil
		}
		got := make([]byte, len(src))
		bar = a.newProgress(int64(len(got)), "verifying", true)
		_, err = transfer(got, bs, f.lba, bar, func(lba uint64, chunk []byte) error {
			return s.Read(ctx, lun, lba, bs, chunk)
		})
		bar.finish()
		if err != nil {
			return &stepError{step: "reading back", err: err}
		}
		if i := firstDiff(src, got); i >= 0 {
			return fmt.Errorf("verify failed: the data read back differs from the data written at byte %d (block %d)", i, f.lba+uint64(i/bs))
		}
		return nil
	})
	if err != nil {
		return err
	}
	sum := sha256.Sum256(src)
	if a.json {
		a.printJSON(map[string]any{"command": "write", "target": tf.target, "lun": lun, "lba": f.lba, "blocks": f.blocks,
			"blockSize": bs, "bytes": len(src), "sha256": hex.EncodeToString(sum[:]), "verified": *verify, "commands": commands,
			"recovery": rc})
		return nil
	}
	v := ""
	if *verify {
		v = ", read back and verified"
	}
	a.printf("wrote %d blocks (%d bytes) at LBA %d of LUN %d%s\n", f.blocks, len(src), f.lba, lun, v)
	return nil
}

// firstDiff returns the first index at which a and b differ, or -1.
func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
