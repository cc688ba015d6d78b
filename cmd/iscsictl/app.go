package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/goiscsi/iscsi/initiator"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// app is what every command shares: output streams, the output and log
// flags, the logger, and the pcap recorder.
type app struct {
	name           string
	stdout, stderr io.Writer
	// terminal is true when stdout is a terminal: progress lines then.
	terminal bool

	json      bool
	logLevel  string
	logFormat string
	pcapPath  string

	log     *zap.Logger
	pcap    *pcapMux
	closers []func()
}

func newApp(name string, stdout, stderr io.Writer) *app {
	a := &app{name: name, stdout: stdout, stderr: stderr, log: zap.NewNop()}
	if f, ok := stdout.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			a.terminal = true
		}
	}
	return a
}

// flags returns the command's flag set with the flags every command has.
func (a *app) flags(usage string) *flag.FlagSet {
	fs := flag.NewFlagSet(a.name, flag.ContinueOnError)
	fs.SetOutput(a.stderr)
	fs.BoolVar(&a.json, "json", false, "print machine-readable JSON on stdout")
	fs.StringVar(&a.logLevel, "log-level", "warn", "log level on stderr: debug, info, warn, error")
	fs.StringVar(&a.logFormat, "log-format", "console", "log format on stderr: console or json")
	fs.Usage = func() {
		fmt.Fprintf(a.stderr, "Usage: iscsictl %s %s\n\nFlags:\n", a.name, usage)
		fs.PrintDefaults()
	}
	return fs
}

// pcapFlag adds --pcap to a command that opens connections.
func (a *app) pcapFlag(fs *flag.FlagSet) {
	fs.StringVar(&a.pcapPath, "pcap", "", "record every connection's traffic into this pcap `file`")
}

// parse parses args, taking flags after positional arguments too, and sets
// up logging and the pcap file. It returns the positional arguments.
func (a *app) parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if err == flag.ErrHelp {
				return nil, err
			}
			return nil, &exitErr{code: exitInvalidArg, msg: err.Error()}
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	log, err := newLogger(a.logLevel, a.logFormat, a.stderr)
	if err != nil {
		return nil, err
	}
	a.log = log
	a.closers = append(a.closers, func() { log.Sync() })
	if a.pcapPath != "" {
		m, err := newPcapMux(a.pcapPath)
		if err != nil {
			return nil, fmt.Errorf("--pcap: %w", err)
		}
		a.pcap = m
	}
	return pos, nil
}

// newLogger builds the zap logger of --log-level and --log-format, writing
// to w.
func newLogger(level, format string, w io.Writer) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, invalidArgf("--log-level %q: want debug, info, warn or error", level)
	}
	ec := zap.NewProductionEncoderConfig()
	ec.EncodeTime = zapcore.ISO8601TimeEncoder
	ec.EncodeDuration = zapcore.StringDurationEncoder
	var enc zapcore.Encoder
	switch format {
	case "console":
		ec.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = safeEncoder{Encoder: zapcore.NewConsoleEncoder(ec)}
	case "json":
		enc = safeEncoder{Encoder: zapcore.NewJSONEncoder(ec), json: true}
	default:
		return nil, invalidArgf("--log-format %q: want console or json", format)
	}
	return zap.New(zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(w)), lvl)), nil
}

// initiatorConfig returns the initiator configuration shared by commands:
// the name, the logger and the pcap recorder.
func (a *app) initiatorConfig(name string) initiator.Config {
	cfg := initiator.Config{Name: name, Logger: a.log}
	if a.pcap != nil {
		cfg.WrapConn = a.pcap.Wrap
	}
	return cfg
}

// newInitiator returns an initiator that finish closes.
func (a *app) newInitiator(cfg initiator.Config) (*initiator.Initiator, error) {
	in, err := initiator.New(cfg)
	if err != nil {
		return nil, err
	}
	// Closed before the pcap file, which records the connections' FINs.
	a.closers = append(a.closers, func() { in.Close() })
	return in, nil
}

// finish closes what the command opened, last opened first, and the pcap
// file after the connections it records.
func (a *app) finish() {
	for i := len(a.closers) - 1; i >= 0; i-- {
		a.closers[i]()
	}
	a.closers = nil
	if a.pcap != nil {
		if err := a.pcap.Close(); err != nil {
			fmt.Fprintf(a.stderr, "iscsictl: --pcap %s: %v\n", a.pcapPath, err)
		}
		a.pcap = nil
	}
}

// exit prints err for the user and returns the exit status.
func (a *app) exit(err error) int {
	if err == nil {
		return exitOK
	}
	code, msg := describe(err)
	if _, ok := err.(*outcomeError); ok {
		// The result is printed already.
		return code
	}
	// The message may quote a target: its name, a redirect address, text
	// of its answers.
	fmt.Fprintf(a.stderr, "iscsictl %s: %s\n", a.name, safe(msg))
	if a.json {
		a.printJSON(map[string]any{"command": a.name, "error": msg, "exitCode": code})
	}
	return code
}

// printJSON writes v as indented JSON on stdout. encoding/json escapes C0
// controls in strings (as \u00XX) and replaces invalid UTF-8; safeOutput
// escapes what it leaves raw (DEL, C1 controls, bidi overrides), so that
// target text in the JSON cannot act on a terminal either.
func (a *app) printJSON(v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		fmt.Fprintf(a.stderr, "iscsictl %s: encoding the JSON output: %v\n", a.name, err)
		return
	}
	a.stdout.Write(safeOutput(buf.Bytes(), "\n", true))
}

// printf writes text output; nothing in --json mode.
func (a *app) printf(format string, args ...any) {
	if !a.json {
		fmt.Fprintf(a.stdout, format, args...)
	}
}

// normalizePortal adds the iSCSI port 3260 to a portal given without one.
func normalizePortal(p string) (string, error) {
	if p == "" {
		return "", invalidArgf("--portal is required (host or host:port)")
	}
	if _, _, err := net.SplitHostPort(p); err == nil {
		return p, nil
	}
	host := strings.TrimSuffix(strings.TrimPrefix(p, "["), "]")
	if host == "" || strings.ContainsAny(host, "[]") {
		return "", invalidArgf("--portal %q: want host or host:port", p)
	}
	return net.JoinHostPort(host, "3260"), nil
}

// ms returns d in milliseconds with a fraction, for JSON.
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
