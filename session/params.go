package session

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/goiscsi/iscsi/pdu"
)

// Params are the operational parameters of RFC 7143 §13. As a Config field
// they are what the initiator offers; on a logged-in session they are what
// was negotiated.
type Params struct {
	HeaderDigest             bool
	DataDigest               bool
	MaxConnections           int
	InitialR2T               bool
	ImmediateData            bool
	MaxRecvDataSegmentLength int // ours: what we accept per PDU
	// TargetMaxRecvDataSegmentLength is what the target declared it accepts
	// (8192 when it declared nothing).
	TargetMaxRecvDataSegmentLength int
	MaxBurstLength                 int
	FirstBurstLength               int
	DefaultTime2Wait               int
	DefaultTime2Retain             int
	MaxOutstandingR2T              int
	DataPDUInOrder                 bool
	DataSequenceInOrder            bool
	ErrorRecoveryLevel             int
	// TargetPortalGroupTag and TargetAlias are what the target declared.
	TargetPortalGroupTag int
	TargetAlias          string
}

// DefaultParams are the initiator's default offers: RFC 7143 defaults, except
// a larger receive segment and burst, and ImmediateData with InitialR2T=No to
// save a round trip per write where the target agrees.
func DefaultParams() Params {
	return Params{
		MaxConnections:                 4,
		InitialR2T:                     false,
		ImmediateData:                  true,
		MaxRecvDataSegmentLength:       256 << 10,
		TargetMaxRecvDataSegmentLength: pdu.DefaultMaxRecvDataSegmentLength,
		MaxBurstLength:                 1 << 20,
		FirstBurstLength:               256 << 10,
		DefaultTime2Wait:               2,
		DefaultTime2Retain:             20,
		MaxOutstandingR2T:              1,
		DataPDUInOrder:                 true,
		DataSequenceInOrder:            true,
		ErrorRecoveryLevel:             0,
	}
}

// rfcDefaults are the values that hold for keys the target never answers.
func rfcDefaults() Params {
	return Params{
		MaxConnections: 1, InitialR2T: true, ImmediateData: true,
		MaxRecvDataSegmentLength: 8192, TargetMaxRecvDataSegmentLength: 8192,
		MaxBurstLength: 262144, FirstBurstLength: 65536, DefaultTime2Wait: 2, DefaultTime2Retain: 20,
		MaxOutstandingR2T: 1, DataPDUInOrder: true, DataSequenceInOrder: true,
	}
}

type kvPair = pdu.KV

func hexValue(b []byte) string { return pdu.FormatHex(b) }

func parseNum(v string) (uint64, error) { return pdu.ParseNumber(v) }

func parseBinary(v string, max int) ([]byte, error) { return pdu.ParseBinary(v, max) }

// negotiator holds one login's operational negotiation from the initiator side.
type negotiator struct {
	offer     Params
	result    Params
	discovery bool
	// pending are keys we offered and the target has not answered yet.
	pending map[string]bool
}

func newNegotiator(offer Params, discovery bool) *negotiator {
	n := &negotiator{offer: offer, discovery: discovery, pending: map[string]bool{}}
	n.result = rfcDefaults()
	n.result.MaxRecvDataSegmentLength = offer.MaxRecvDataSegmentLength
	return n
}

// keys returns the keys the initiator offers in the operational stage.
func (n *negotiator) keys() []kvPair {
	o := n.offer
	digest := func(on bool) string {
		if on {
			return "CRC32C,None"
		}
		return "None"
	}
	kvs := []kvPair{
		kv("HeaderDigest", digest(o.HeaderDigest)),
		kv("DataDigest", digest(o.DataDigest)),
		kv("MaxRecvDataSegmentLength", strconv.Itoa(o.MaxRecvDataSegmentLength)),
		kv("DefaultTime2Wait", strconv.Itoa(o.DefaultTime2Wait)),
		kv("DefaultTime2Retain", strconv.Itoa(o.DefaultTime2Retain)),
		kv("ErrorRecoveryLevel", strconv.Itoa(o.ErrorRecoveryLevel)),
	}
	if !n.discovery {
		kvs = append(kvs,
			kv("MaxConnections", strconv.Itoa(o.MaxConnections)),
			kv("InitialR2T", pdu.FormatBool(o.InitialR2T)),
			kv("ImmediateData", pdu.FormatBool(o.ImmediateData)),
			kv("MaxBurstLength", strconv.Itoa(o.MaxBurstLength)),
			kv("FirstBurstLength", strconv.Itoa(o.FirstBurstLength)),
			kv("MaxOutstandingR2T", strconv.Itoa(o.MaxOutstandingR2T)),
			kv("DataPDUInOrder", pdu.FormatBool(o.DataPDUInOrder)),
			kv("DataSequenceInOrder", pdu.FormatBool(o.DataSequenceInOrder)),
		)
	}
	for _, kv := range kvs {
		if kv.Key != "MaxRecvDataSegmentLength" {
			n.pending[kv.Key] = true
		}
	}
	return kvs
}

// numeric bounds of RFC 7143 §13.
var bounds = map[string][2]int{
	"MaxConnections":           {1, 65535},
	"MaxRecvDataSegmentLength": {512, 1<<24 - 1},
	"MaxBurstLength":           {512, 1<<24 - 1},
	"FirstBurstLength":         {512, 1<<24 - 1},
	"DefaultTime2Wait":         {0, 3600},
	"DefaultTime2Retain":       {0, 3600},
	"MaxOutstandingR2T":        {1, 65535},
	"ErrorRecoveryLevel":       {0, 2},
	"TargetPortalGroupTag":     {0, 65535},
}

func (n *negotiator) number(key, v string) (int, error) {
	x, err := parseNum(v)
	b := bounds[key]
	if err != nil || x < uint64(b[0]) || x > uint64(b[1]) {
		return 0, &NegotiationError{Key: key, Reason: fmt.Sprintf("value %q outside %d-%d", v, b[0], b[1])}
	}
	return int(x), nil
}

// apply takes one key the target sent in the operational stage. It returns a
// reply to send when the target offered a key we did not (nil otherwise).
func (n *negotiator) apply(key, v string) (*kvPair, error) {
	offered := n.pending[key]
	delete(n.pending, key)
	if v == "NotUnderstood" || v == "Irrelevant" {
		// The default holds.
		return nil, nil
	}
	if v == "Reject" {
		if offered {
			return nil, nil
		}
		return nil, &NegotiationError{Key: key, Reason: "target sent Reject for a key we did not offer"}
	}
	r := &n.result
	o := &n.offer
	var err error
	var reply string
	switch key {
	case "HeaderDigest", "DataDigest":
		var on bool
		switch v {
		case "CRC32C":
			on = true
		case "None":
		default:
			if offered {
				return nil, &NegotiationError{Key: key, Reason: "target chose " + strconvQuote(v) + ", not in our list"}
			}
			// The target offers a list: pick what we want from it.
			want := "None"
			if (key == "HeaderDigest" && o.HeaderDigest || key == "DataDigest" && o.DataDigest) && listHas(v, "CRC32C") {
				want, on = "CRC32C", true
			}
			if !listHas(v, want) {
				return nil, &NegotiationError{Key: key, Reason: "no common digest in " + strconvQuote(v)}
			}
			reply = want
		}
		mine := o.HeaderDigest
		if key == "DataDigest" {
			mine = o.DataDigest
		}
		if on && !mine {
			return nil, &NegotiationError{Key: key, Reason: "target chose CRC32C, which we did not offer"}
		}
		if key == "HeaderDigest" {
			r.HeaderDigest = on
		} else {
			r.DataDigest = on
		}
	case "MaxRecvDataSegmentLength":
		r.TargetMaxRecvDataSegmentLength, err = n.number(key, v)
	case "MaxConnections", "MaxBurstLength", "FirstBurstLength", "MaxOutstandingR2T", "DefaultTime2Retain", "ErrorRecoveryLevel":
		// Minimum functions.
		var x int
		if x, err = n.number(key, v); err != nil {
			break
		}
		mine := map[string]int{"MaxConnections": o.MaxConnections, "MaxBurstLength": o.MaxBurstLength,
			"FirstBurstLength": o.FirstBurstLength, "MaxOutstandingR2T": o.MaxOutstandingR2T,
			"DefaultTime2Retain": o.DefaultTime2Retain, "ErrorRecoveryLevel": o.ErrorRecoveryLevel}[key]
		if offered && x > mine {
			return nil, &NegotiationError{Key: key, Reason: fmt.Sprintf("target answered %d, above our offer %d", x, mine)}
		}
		x = min(x, mine)
		if !offered {
			reply = strconv.Itoa(x)
		}
		switch key {
		case "MaxConnections":
			r.MaxConnections = x
		case "MaxBurstLength":
			r.MaxBurstLength = x
		case "FirstBurstLength":
			r.FirstBurstLength = x
		case "MaxOutstandingR2T":
			r.MaxOutstandingR2T = x
		case "DefaultTime2Retain":
			r.DefaultTime2Retain = x
		case "ErrorRecoveryLevel":
			r.ErrorRecoveryLevel = x
		}
	case "DefaultTime2Wait":
		var x int
		if x, err = n.number(key, v); err != nil {
			break
		}
		if offered && x < o.DefaultTime2Wait {
			return nil, &NegotiationError{Key: key, Reason: fmt.Sprintf("target answered %d, below our offer %d", x, o.DefaultTime2Wait)}
		}
		r.DefaultTime2Wait = max(x, o.DefaultTime2Wait)
		if !offered {
			reply = strconv.Itoa(r.DefaultTime2Wait)
		}
	case "InitialR2T", "DataPDUInOrder", "DataSequenceInOrder", "ImmediateData":
		var b bool
		if b, err = pdu.ParseBool(v); err != nil {
			return nil, &NegotiationError{Key: key, Reason: err.Error()}
		}
		mine := map[string]bool{"InitialR2T": o.InitialR2T, "DataPDUInOrder": o.DataPDUInOrder,
			"DataSequenceInOrder": o.DataSequenceInOrder, "ImmediateData": o.ImmediateData}[key]
		var res bool
		if key == "ImmediateData" {
			res = b && mine // AND
			if offered && b && !mine {
				return nil, &NegotiationError{Key: key, Reason: "target answered Yes to our No"}
			}
		} else {
			res = b || mine // OR
			if offered && !b && mine {
				return nil, &NegotiationError{Key: key, Reason: "target answered No to our Yes"}
			}
		}
		if !offered {
			reply = pdu.FormatBool(res)
		}
		switch key {
		case "InitialR2T":
			r.InitialR2T = res
		case "ImmediateData":
			r.ImmediateData = res
		case "DataPDUInOrder":
			r.DataPDUInOrder = res
		case "DataSequenceInOrder":
			r.DataSequenceInOrder = res
		}
	case "TargetPortalGroupTag":
		r.TargetPortalGroupTag, err = n.number(key, v)
	case "TargetAlias":
		r.TargetAlias = v
	case "TargetAddress":
		// Only meaningful with a redirect; ignore it here.
	case "IFMarker", "OFMarker":
		// RFC 3720 keys that RFC 7143 dropped: we do not do markers.
		reply = "No"
	case "OFMarkInt", "IFMarkInt":
		reply = "Irrelevant"
	case "SessionType", "TargetName", "InitiatorName", "InitiatorAlias", "AuthMethod":
		// Declarations already made in the security stage, or echoes.
	default:
		if !offered {
			reply = "NotUnderstood"
		}
	}
	if err != nil {
		return nil, err
	}
	if reply != "" {
		return &kvPair{Key: key, Value: reply}, nil
	}
	return nil, nil
}

// finish checks the negotiated values for consistency.
func (n *negotiator) finish() (Params, error) {
	r := n.result
	if n.discovery {
		// A discovery session negotiates only what it offered.
		return r, nil
	}
	if r.FirstBurstLength > r.MaxBurstLength {
		r.FirstBurstLength = r.MaxBurstLength
	}
	return r, nil
}

func listHas(list, v string) bool {
	for _, x := range strings.Split(list, ",") {
		if x == v {
			return true
		}
	}
	return false
}

func strconvQuote(s string) string { return strconv.Quote(s) }

// durationSeconds converts a Time2Wait-style count of seconds.
func durationSeconds(n int) time.Duration { return time.Duration(n) * time.Second }

func kv(k, v string) kvPair { return kvPair{Key: k, Value: v} }
