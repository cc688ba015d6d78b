package main

import "github.com/goiscsi/iscsi/agent/api"

// The JSON documents write every protocol identifier in one notation: a
// string of "0x" and lower-case hex digits, zero-padded to the field's
// width (docs/JSON.md). A TSIH is "0x0001", a CID "0x0000", an ISID
// "0x80f8f60a6040", an ITT "0x00000012". Text output writes TSIHs the same
// way. (An HRESULT keeps Microsoft's upper-case digits: it is a status
// code, not an identifier.)

// hexTSIH and hexCID are the agent API's identifiers in JSON (one
// encoder for both documents).
type (
	hexTSIH = api.HexTSIH
	hexCID  = api.HexCID
)

// cidList converts CIDs for JSON; never nil, so that it is [] rather than
// null.
func cidList(cids []uint16) []hexCID {
	out := make([]hexCID, len(cids))
	for i, c := range cids {
		out[i] = hexCID(c)
	}
	return out
}

// isidHex is an ISID in JSON notation.
func isidHex(isid [6]byte) string { return api.ISIDHex(isid) }

// isidFrom12 takes an ISID of 12 hex digits (the agent API's) into the
// JSON notation.
func isidFrom12(s string) string {
	if len(s) == 12 {
		return "0x" + s
	}
	return s
}
