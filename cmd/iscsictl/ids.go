package main

import (
	"encoding/json"
	"fmt"

	"github.com/goiscsi/iscsi/logout"
)

// The JSON documents write every protocol identifier in one notation: a
// string of "0x" and lower-case hex digits, zero-padded to the field's
// width (docs/JSON.md). A TSIH is "0x0001", a CID "0x0000", an ISID
// "0x80f8f60a6040", an ITT "0x00000012". Text output writes TSIHs the same
// way. (An HRESULT keeps Microsoft's upper-case digits: it is a status
// code, not an identifier.)

// hexTSIH is a TSIH in JSON.
type hexTSIH uint16

func (v hexTSIH) MarshalJSON() ([]byte, error) { return json.Marshal(fmt.Sprintf("0x%04x", uint16(v))) }

// hexCID is a CID in JSON.
type hexCID uint16

func (v hexCID) MarshalJSON() ([]byte, error) { return json.Marshal(fmt.Sprintf("0x%04x", uint16(v))) }

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
func isidHex(isid [6]byte) string { return fmt.Sprintf("0x%012x", isid[:]) }

// isidFrom12 takes an ISID of 12 hex digits (the agent API's) into the
// JSON notation.
func isidFrom12(s string) string {
	if len(s) == 12 {
		return "0x" + s
	}
	return s
}

// commandsJSON counts the commands in flight at a logout by how they
// ended; total is their sum.
type commandsJSON struct {
	Completed int `json:"completed"`
	Aborted   int `json:"aborted"`
	Unknown   int `json:"unknown"`
	Total     int `json:"total"`
}

func toCommandsJSON(c logout.Commands) commandsJSON {
	return commandsJSON{Completed: c.Completed, Aborted: c.Aborted, Unknown: c.Unknown, Total: c.Total()}
}
