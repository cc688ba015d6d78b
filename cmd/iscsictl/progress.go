package main

import (
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
)

// progress is a progress bar on stderr while a long command runs: only
// when stderr is a terminal and the output is not JSON, so that a pipe or a
// log file never gets one. A nil *progress does nothing.
type progress struct {
	bar *progressbar.ProgressBar
}

// progressWriter returns where progress bars go: stderr when it is a
// terminal, else nil.
func (a *app) progressWriter() io.Writer {
	if a.json {
		return nil
	}
	f, ok := a.stderr.(*os.File)
	if !ok {
		return nil
	}
	st, err := f.Stat()
	if err != nil || st.Mode()&os.ModeCharDevice == 0 {
		return nil
	}
	return f
}

// newProgress returns a bar of total units (bytes when bytes is true)
// described by desc, or nil when there is no terminal to draw it on.
func (a *app) newProgress(total int64, desc string, bytes bool) *progress {
	w := a.progressWriter()
	if w == nil {
		return nil
	}
	return newProgressTo(w, total, desc, bytes)
}

// newProgressTo draws the bar on w.
func newProgressTo(w io.Writer, total int64, desc string, bytes bool) *progress {
	opts := []progressbar.Option{
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100 * time.Millisecond),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionShowCount(),
		progressbar.OptionSetPredictTime(true),
	}
	if bytes {
		opts = append(opts, progressbar.OptionShowBytes(true), progressbar.OptionUseIECUnits(true))
	}
	return &progress{bar: progressbar.NewOptions64(total, opts...)}
}

// add advances the bar by n units.
func (p *progress) add(n int64) {
	if p != nil {
		p.bar.Add64(n)
	}
}

// clear takes the bar off the line, for a line of output to be printed.
func (p *progress) clear() {
	if p != nil {
		p.bar.Clear()
	}
}

// finish removes the bar.
func (p *progress) finish() {
	if p != nil {
		p.bar.Finish()
	}
}
