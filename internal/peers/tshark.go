package peers

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// TsharkTimeout bounds each tshark run of this package.
var TsharkTimeout = 2 * time.Minute

// MalformedFilter is the display filter selecting packets tshark finds
// malformed or flags with an expert-info error.
const MalformedFilter = "_ws.malformed || _ws.expert.severity == error"

// TsharkFields returns, for every packet of the capture file at pcapPath,
// the values of the given tshark fields (such as "iscsi.opcode"), one row per
// packet and one column per field. Traffic on TCP port is dissected as
// iSCSI; port 0 relies on tshark's default (port 3260). A field that occurs
// several times in a packet has its values joined with commas.
func TsharkFields(pcapPath string, port int, fields ...string) ([][]string, error) {
	return TsharkFieldsFilter(pcapPath, port, "", fields...)
}

// TsharkFieldsFilter is TsharkFields restricted to the packets matching the
// display filter; an empty filter matches every packet.
func TsharkFieldsFilter(pcapPath string, port int, filter string, fields ...string) ([][]string, error) {
	if len(fields) == 0 {
		return nil, fmt.Errorf("peers: tshark: no fields requested")
	}
	args := tsharkBaseArgs(pcapPath, port)
	if filter != "" {
		args = append(args, "-Y", filter)
	}
	args = append(args, "-T", "fields", "-E", "separator=/t", "-E", "occurrence=a", "-E", "aggregator=,")
	for _, f := range fields {
		args = append(args, "-e", f)
	}
	out, err := runTshark(args...)
	if err != nil {
		return nil, err
	}
	var rows [][]string
	for line := range strings.Lines(out) {
		line = strings.TrimRight(line, "\r\n")
		row := strings.Split(line, "\t")
		if len(row) != len(fields) {
			return nil, fmt.Errorf("peers: tshark: %d columns for %d fields in %q", len(row), len(fields), line)
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// TsharkMalformed returns how many packets of the capture file at pcapPath
// tshark finds malformed or flags with an expert-info error (see
// MalformedFilter), dissecting TCP port as iSCSI.
func TsharkMalformed(pcapPath string, port int) (int, error) {
	rows, err := TsharkFieldsFilter(pcapPath, port, MalformedFilter, "frame.number")
	if err != nil {
		return 0, err
	}
	return len(rows), nil
}

func tsharkBaseArgs(pcapPath string, port int) []string {
	args := []string{"-r", pcapPath, "-n"}
	if port > 0 {
		args = append(args, "-d", "tcp.port=="+strconv.Itoa(port)+",iscsi")
	}
	return args
}

// runTshark runs tshark and returns its standard output; standard error
// (which carries a warning when running as root) is only reported on
// failure.
func runTshark(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), TsharkTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "tshark", args...)
	cmd.WaitDelay = time.Second
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("peers: tshark %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}
