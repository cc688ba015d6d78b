package main

import (
	"errors"
	"strings"
	"testing"
)

// TestIORowSpread: a row gives the spread of CPU per I/O of both
// initiators' runs beside the medians, leaving failed runs out.
func TestIORowSpread(t *testing.T) {
	r := &ioRow{cfg: ioConfig{Name: "4k-randread-qd1"},
		peer: []sample{{IOPS: 9000, CPUus: 38.8}, {IOPS: 22000, CPUus: 10.6}, {IOPS: 15000, CPUus: 15.6}},
		ours: []sample{{IOPS: 11000, CPUus: 33.1}, {IOPS: 11200, CPUus: 30.2}, {IOPS: 10900, CPUus: 35.0}},
	}
	line := ioRowLine(r, "libiscsi")
	if want := "3+3 runs; CPU µs/IO 10.60–38.80 / 30.20–35.00 |"; !strings.HasSuffix(line, want) {
		t.Errorf("row %q\ndoes not end with %q", line, want)
	}
	if lo, hi := spread([]sample{{CPUus: 5}, {Err: errors.New("x"), CPUus: 1}, {CPUus: 7}}, cpuus); lo != 5 || hi != 7 {
		t.Errorf("spread with a failed run: %v–%v, want 5–7 (the failed run left out)", lo, hi)
	}
}
