package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/goiscsi/iscsi/initiator"
	"github.com/spf13/pflag"
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
	pcapSnap  int

	// ran is set once a command's own code runs: an error before it is
	// the command line's (status 5).
	ran bool
	// helpOnStdout is set by `iscsictl help COMMAND`.
	helpOnStdout bool

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

// pcapFlag adds --pcap and --pcap-snaplen to a command that opens
// connections.
func (a *app) pcapFlag(fs *pflag.FlagSet) {
	fs.StringVar(&a.pcapPath, "pcap", "", "record every connection's traffic into this pcap `file`")
	fs.IntVar(&a.pcapSnap, "pcap-snaplen", 0, "with --pcap: record at most this many `bytes` of each packet (0: all of it; 128 keeps the headers: BHS and AHS, no data)")
}

// setup sets up logging and the pcap file of the parsed flags.
func (a *app) setup() error {
	log, err := newLogger(a.logLevel, a.logFormat, a.stderr)
	if err != nil {
		return err
	}
	a.log = log
	a.closers = append(a.closers, func() { log.Sync() })
	if a.pcapSnap < 0 || a.pcapSnap > 0 && a.pcapSnap < minSnapLen {
		return invalidArgf("--pcap-snaplen %d: want 0 (whole packets) or at least %d (the Ethernet, IP and TCP headers and a BHS)", a.pcapSnap, minSnapLen)
	}
	if a.pcapSnap > 0 && a.pcapPath == "" {
		return invalidArgf("--pcap-snaplen is for --pcap")
	}
	if a.pcapPath != "" {
		m, err := newPcapMux(a.pcapPath, a.pcapSnap)
		if err != nil {
			return fmt.Errorf("--pcap: %w", err)
		}
		a.pcap = m
	}
	return nil
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
	prefix := "iscsictl"
	if a.name != "" {
		prefix += " " + a.name
	}
	fmt.Fprintf(a.stderr, "%s: %s\n", prefix, safe(msg))
	var ee *exitErr
	if a.json && !(errors.As(err, &ee) && ee.resultPrinted) {
		a.printJSON(map[string]any{"command": a.name, "error": msg, "exitCode": code})
	}
	return code
}

// jsonSchemaVersion is the version of the JSON documents the commands
// print (docs/JSON.md); every document carries it as "schemaVersion".
const jsonSchemaVersion = 1

// printJSON writes v, a JSON object, as indented JSON on stdout, with
// "schemaVersion" first. encoding/json escapes C0 controls in strings (as
// \u00XX) and replaces invalid UTF-8; safeOutput escapes what it leaves raw
// (DEL, C1 controls, bidi overrides), so that target text in the JSON
// cannot act on a terminal either.
func (a *app) printJSON(v any) {
	b, err := json.Marshal(v)
	if err == nil && (len(b) < 2 || b[0] != '{') {
		err = fmt.Errorf("%T is not a JSON object", v)
	}
	if err != nil {
		fmt.Fprintf(a.stderr, "iscsictl %s: encoding the JSON output: %v\n", a.name, err)
		return
	}
	var raw bytes.Buffer
	fmt.Fprintf(&raw, `{"schemaVersion":%d`, jsonSchemaVersion)
	if !bytes.HasPrefix(b, []byte(`{"schemaVersion":`)) {
		if len(b) > 2 {
			raw.WriteByte(',')
		}
		raw.Write(b[1:])
	} else if i := bytes.IndexAny(b, ",}"); i >= 0 {
		// v has its own schemaVersion field: this one replaces it.
		raw.Write(b[i:])
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw.Bytes(), "", "  "); err != nil {
		fmt.Fprintf(a.stderr, "iscsictl %s: encoding the JSON output: %v\n", a.name, err)
		return
	}
	buf.WriteByte('\n')
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
