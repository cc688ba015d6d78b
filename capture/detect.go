package capture

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"slices"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// DetectPorts finds the TCP ports of the iSCSI targets in a pcap or pcapng
// capture, whatever they are, for Options.Ports: a segment that starts with
// a Login Request (opcode 0x03, Version-max and Version-min 0, text keys
// with InitiatorName=) names the target's port as its destination, a Login
// Response (0x23) as its source. Failing any login (a capture that began
// after it), a segment holding exactly one whole SCSI Command PDU (opcode
// 0x01, no AHS, the data segment length matching the segment) names its
// destination. The ports are in increasing order; none is not an error.
func DetectPorts(r io.Reader) ([]uint16, error) {
	src, err := openCapture(r)
	if err != nil {
		return nil, err
	}
	logins := map[uint16]bool{}
	commands := map[uint16]bool{}
	for n := 1; ; n++ {
		data, _, err := src.ReadPacketData()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("capture: packet %d: %w", n, err)
		}
		p := gopacket.NewPacket(data, src.LinkType(), gopacket.DecodeOptions{Lazy: true, NoCopy: true})
		tl, ok := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if !ok || len(tl.Payload) < 48 {
			continue
		}
		b := tl.Payload
		switch {
		case isLoginRequest(b):
			logins[uint16(tl.DstPort)] = true
		case isLoginResponse(b):
			logins[uint16(tl.SrcPort)] = true
		case isWholeSCSICommand(b):
			commands[uint16(tl.DstPort)] = true
		}
	}
	found := logins
	if len(found) == 0 {
		found = commands
	}
	ports := make([]uint16, 0, len(found))
	for p := range found {
		ports = append(ports, p)
	}
	slices.Sort(ports)
	return ports, nil
}

// dataSegmentLength is the BHS's DataSegmentLength.
func dataSegmentLength(b []byte) int { return int(b[5])<<16 | int(binary.BigEndian.Uint16(b[6:8])) }

// isLoginRequest: opcode 0x03 with the immediate bit, the stage bits
// valid (CSG and NSG not 2, RFC 7143 §11.12), Version-max and Version-min
// 0, no AHS, and text keys that name the initiator.
func isLoginRequest(b []byte) bool {
	if b[0] != 0x43 || b[1]&0x30 != 0 || b[1]&0x0c == 0x08 || b[2] != 0 || b[3] != 0 || b[4] != 0 {
		return false
	}
	dl := dataSegmentLength(b)
	text := b[48:min(len(b), 48+dl)]
	return dl > 0 && bytes.Contains(text, []byte("InitiatorName="))
}

// isLoginResponse: opcode 0x23, the stage bits valid, Version-max and
// Version-active 0, no AHS.
func isLoginResponse(b []byte) bool {
	return b[0] == 0x23 && b[1]&0x30 == 0 && b[1]&0x0c != 0x08 && b[2] == 0 && b[3] == 0 && b[4] == 0
}

// isWholeSCSICommand: opcode 0x01 (with or without the immediate bit),
// the reserved bits of byte 1 zero, no AHS, and the segment exactly one
// PDU long (the data padded to 4 bytes, with or without digests).
func isWholeSCSICommand(b []byte) bool {
	if b[0]&0xbf != 0x01 || b[1]&0x18 != 0 || b[2] != 0 || b[3] != 0 || b[4] != 0 {
		return false
	}
	dl := dataSegmentLength(b)
	pad := (dl + 3) &^ 3
	// No digest, one of the two, or both.
	return len(b) == 48+pad || len(b) == 52+pad || len(b) == 56+pad
}
