package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/goiscsi/iscsi/capture"
	"github.com/goiscsi/iscsi/pdu"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
)

// detectPorts finds the target ports of the capture at path.
func detectPorts(path string) ([]uint16, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ports, err := capture.DetectPorts(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return ports, nil
}

// portsOrDefault is the ports decode used, for JSON.
func portsOrDefault(p portList) []uint16 {
	if len(p) == 0 {
		return []uint16{3260}
	}
	return p
}

// portList is a repeatable --port flag that also takes comma-separated
// lists.
type portList []uint16

func (p *portList) String() string {
	s := make([]string, len(*p))
	for i, x := range *p {
		s[i] = strconv.Itoa(int(x))
	}
	return strings.Join(s, ",")
}

func (p *portList) Type() string { return "ports" }

func (p *portList) Set(v string) error {
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.ParseUint(strings.TrimSpace(f), 10, 16)
		if err != nil || n == 0 {
			return fmt.Errorf("port %q: want 1 to 65535", f)
		}
		*p = append(*p, uint16(n))
	}
	return nil
}

// recordJSON is a decoded PDU as --json prints it.
type recordJSON struct {
	Frame         int     `json:"frame"`
	Time          float64 `json:"time"` // seconds since the first PDU
	Src           string  `json:"src"`
	Dst           string  `json:"dst"`
	FromInitiator bool    `json:"fromInitiator"`
	Opcode        uint8   `json:"opcode"`
	Name          string  `json:"name"`
	ITT           string  `json:"itt"`
	DataLength    int     `json:"dataLength"`
	Summary       string  `json:"summary"`
	Error         string  `json:"error,omitempty"`
}

func defDecode(a *app, fs *pflag.FlagSet) runFunc {
	var ports portList
	fs.Var(&ports, "port", "TCP port(s) of the targets in the capture (default: the ports on which it shows a Login or a SCSI Command, else 3260); repeat or separate with commas")
	hd := fs.Bool("header-digest", false, "the connections negotiated header digests")
	dd := fs.Bool("data-digest", false, "the connections negotiated data digests")
	return func(ctx context.Context, pos []string) error { return runDecode(ctx, a, pos, ports, hd, dd) }
}

func runDecode(ctx context.Context, a *app, pos []string, ports portList, hd, dd *bool) error {
	if len(ports) == 0 {
		// No --port: the ports on which the capture shows a login (or a
		// SCSI Command), so that a capture of a target on any port decodes.
		found, err := detectPorts(pos[0])
		if err != nil {
			return err
		}
		if len(found) > 0 {
			a.log.Info("iSCSI found in the capture", zap.Any("ports", found))
			ports = found
		}
	}
	rs, err := capture.ReadFile(pos[0], capture.Options{Ports: ports, HeaderDigest: *hd, DataDigest: *dd})
	if err != nil && len(rs) == 0 {
		return err
	}
	var t0 time.Time
	if len(rs) > 0 {
		t0 = rs[0].Time
	}
	if a.json {
		out := make([]recordJSON, 0, len(rs))
		for i := range rs {
			r := &rs[i]
			j := recordJSON{Frame: r.Frame, Time: r.Time.Sub(t0).Seconds(), Src: r.Src.String(), Dst: r.Dst.String(),
				FromInitiator: r.FromInitiator, Opcode: uint8(r.Header.Opcode()), Name: r.Header.Opcode().String(),
				ITT: fmt.Sprintf("0x%08x", r.Header.ITT()), DataLength: len(r.Data), Summary: summarize(r)}
			if r.Err != nil {
				j.Error = r.Err.Error()
			}
			out = append(out, j)
		}
		v := map[string]any{"command": "decode", "file": pos[0], "ports": portsOrDefault(ports), "pdus": out}
		if err != nil {
			v["error"] = trimPrefixes(err.Error())
		}
		a.printJSON(v)
		return err
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FRAME\tTIME\tFROM\tTO\tPDU\tITT\tDETAIL")
	for i := range rs {
		r := &rs[i]
		detail := summarize(r)
		if r.Err != nil {
			detail += " [" + trimPrefixes(r.Err.Error()) + "]"
		}
		// The detail quotes the capture's text keys: the targets' text.
		fmt.Fprintf(tw, "%d\t%.6f\t%s\t%s\t%s\t0x%08x\t%s\n", r.Frame, r.Time.Sub(t0).Seconds(), r.Src, r.Dst,
			r.Header.Opcode(), r.Header.ITT(), safe(detail))
	}
	tw.Flush()
	a.printf("%d PDUs\n", len(rs))
	return err
}

// scsiOps names the SCSI operation codes an initiator commonly sends.
var scsiOps = map[byte]string{
	0x00: "TEST UNIT READY", 0x03: "REQUEST SENSE", 0x12: "INQUIRY", 0x1a: "MODE SENSE(6)", 0x25: "READ CAPACITY(10)",
	0x28: "READ(10)", 0x2a: "WRITE(10)", 0x35: "SYNCHRONIZE CACHE(10)", 0x88: "READ(16)", 0x8a: "WRITE(16)",
	0x9e: "SERVICE ACTION IN(16)", 0xa0: "REPORT LUNS", 0x5a: "MODE SENSE(10)",
}

// summarize describes a PDU's fields that matter for reading a trace.
func summarize(r *capture.Record) string {
	switch p := r.PDU.(type) {
	case *pdu.LoginRequest:
		return fmt.Sprintf("CSG %d NSG %d%s ISID %012x TSIH 0x%04x CID %d CmdSN %d%s", p.CSG, p.NSG, mark(p.Transit, " T"),
			p.ISID[:], p.TSIH, p.CID, p.CmdSN, textKeys(r.Data))
	case *pdu.LoginResponse:
		st := pdu.LoginStatus(uint16(p.StatusClass)<<8 | uint16(p.StatusDetail))
		return fmt.Sprintf("CSG %d NSG %d%s TSIH 0x%04x status %s StatSN %d%s", p.CSG, p.NSG, mark(p.Transit, " T"),
			p.TSIH, st, p.StatSN, textKeys(r.Data))
	case *pdu.TextRequest:
		return fmt.Sprintf("CmdSN %d%s", p.CmdSN, textKeys(r.Data))
	case *pdu.TextResponse:
		return fmt.Sprintf("StatSN %d%s%s", p.StatSN, mark(p.Continue, " C"), textKeys(r.Data))
	case *pdu.SCSICommand:
		name, ok := scsiOps[p.CDB[0]]
		if !ok {
			name = fmt.Sprintf("CDB 0x%02x", p.CDB[0])
		}
		return fmt.Sprintf("%s LUN %d length %d CmdSN %d%s", name, p.LUN.Number(), p.ExpectedDataTransferLength, p.CmdSN, immediateData(r))
	case *pdu.SCSIResponse:
		return fmt.Sprintf("status 0x%02x response 0x%02x StatSN %d", p.Status, p.Response, p.StatSN)
	case *pdu.DataIn:
		s := fmt.Sprintf("DataSN %d offset %d length %d", p.DataSN, p.BufferOffset, len(r.Data))
		if p.HasStatus {
			s += fmt.Sprintf(" status 0x%02x StatSN %d", p.Status, p.StatSN)
		}
		return s
	case *pdu.DataOut:
		return fmt.Sprintf("DataSN %d offset %d length %d%s", p.DataSN, p.BufferOffset, len(r.Data), mark(p.Final, " F"))
	case *pdu.R2T:
		return fmt.Sprintf("R2TSN %d offset %d length %d", p.R2TSN, p.BufferOffset, p.DesiredDataTransferLength)
	case *pdu.NOPOut:
		return fmt.Sprintf("TTT 0x%08x CmdSN %d", p.TTT, p.CmdSN)
	case *pdu.NOPIn:
		return fmt.Sprintf("TTT 0x%08x StatSN %d", p.TTT, p.StatSN)
	case *pdu.LogoutRequest:
		return fmt.Sprintf("reason %d (%s) CID %d CmdSN %d%s", p.ReasonCode, reasonName(p.ReasonCode), p.CID, p.CmdSN, mark(p.Immediate, " immediate"))
	case *pdu.LogoutResponse:
		return fmt.Sprintf("response %d (%s) Time2Wait %d Time2Retain %d StatSN %d", p.Response,
			p.Response.String(), p.Time2Wait, p.Time2Retain, p.StatSN)
	case *pdu.TaskMgmtRequest:
		return fmt.Sprintf("function %d RefTaskTag 0x%08x", p.Function, p.RefTaskTag)
	case *pdu.TaskMgmtResponse:
		return "response " + p.Response.String()
	case *pdu.AsyncMessage:
		return fmt.Sprintf("event %s, parameters %d %d %d", p.AsyncEvent.String(), p.Parameter1, p.Parameter2, p.Parameter3)
	case *pdu.Reject:
		s := "reason " + p.Reason.String()
		if len(r.Data) >= pdu.BHSLen {
			var h pdu.BHS
			copy(h[:], r.Data)
			s += fmt.Sprintf(" of %s ITT 0x%08x", h.Opcode(), h.ITT())
		}
		return s
	}
	if len(r.Data) > 0 {
		return fmt.Sprintf("%d bytes of data", len(r.Data))
	}
	return ""
}

func mark(b bool, s string) string {
	if b {
		return s
	}
	return ""
}

func immediateData(r *capture.Record) string {
	if len(r.Data) == 0 {
		return ""
	}
	return fmt.Sprintf(" immediate data %d", len(r.Data))
}

// textKeys lists a text segment's keys and values, shortening long values
// (CHAP challenges and responses).
func textKeys(data []byte) string {
	if len(data) == 0 {
		return ""
	}
	kvs, err := pdu.ParseText(data, pdu.TextLimits{MaxPairs: 1 << 10, AllowDuplicates: true})
	if err != nil {
		return fmt.Sprintf(" [%d bytes of text: %v]", len(data), trimPrefixes(err.Error()))
	}
	var b strings.Builder
	for _, kv := range kvs {
		v := kv.Value
		if len(v) > 40 {
			v = v[:37] + "..."
		}
		b.WriteString(" " + kv.Key + "=" + v)
	}
	return b.String()
}
