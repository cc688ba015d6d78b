package session

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

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
	// ErrorRecoveryLevel may be offered up to what the package implements,
	// 0: Login refuses a higher one with ErrInvalidConfig.
	ErrorRecoveryLevel int
	// TargetPortalGroupTag and TargetAlias are what the target declared.
	TargetPortalGroupTag int
	TargetAlias          string
}

// DefaultParams are the initiator's default offers: RFC 7143 defaults, except
// a larger receive segment and burst, ImmediateData with InitialR2T=No to
// save a round trip per write where the target agrees, and
// DefaultTime2Retain 0 (as open-iscsi offers). At ErrorRecoveryLevel 0
// nothing is ever recovered, and a retain time only keeps a session's state
// at the target after its connections ended: LIO keeps a session whose last
// connection logged out with reason 1 for that long.
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
		DefaultTime2Retain:             0,
		MaxOutstandingR2T:              1,
		DataPDUInOrder:                 true,
		DataSequenceInOrder:            true,
		ErrorRecoveryLevel:             0,
	}
}

// maxErrorRecoveryLevel is the highest ErrorRecoveryLevel this package
// implements: it recovers nothing (no SNACK, no task or connection
// recovery), so it offers no more than 0. A change that implements a
// recovery class raises it.
const maxErrorRecoveryLevel = 0

// ErrInvalidConfig is wrapped by the errors about a Config the package
// cannot log in with, such as a parameter it does not implement.
var ErrInvalidConfig = errors.New("iscsi: invalid configuration")

// check refuses offers the initiator could not honour: an offer is a
// promise to the target.
func (p Params) check() error {
	if p.ErrorRecoveryLevel < 0 || p.ErrorRecoveryLevel > 2 {
		return fmt.Errorf("%w: ErrorRecoveryLevel %d is outside 0-2 (RFC 7143 §13.20)", ErrInvalidConfig, p.ErrorRecoveryLevel)
	}
	if p.ErrorRecoveryLevel > maxErrorRecoveryLevel {
		return fmt.Errorf("%w: ErrorRecoveryLevel %d is not implemented: the highest is %d", ErrInvalidConfig, p.ErrorRecoveryLevel, maxErrorRecoveryLevel)
	}
	return nil
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
	// leading is false on a connection added to a session: it negotiates
	// only the connection's own keys (RFC 7143 §13: the LO keys may be
	// used on the leading connection only).
	leading bool
	// pending are keys we offered and the target has not answered yet.
	pending map[string]bool
	// seen are keys already negotiated in this login: a target sending one
	// again is renegotiating, which RFC 7143 §6.2 forbids.
	seen map[string]bool
}

func newNegotiator(offer Params, discovery, leading bool) *negotiator {
	n := &negotiator{offer: offer, discovery: discovery, leading: leading, pending: map[string]bool{}, seen: map[string]bool{}}
	n.result = rfcDefaults()
	n.result.MaxRecvDataSegmentLength = offer.MaxRecvDataSegmentLength
	return n
}

// leadingOnly are the operational keys RFC 7143 §13 marks LO.
var leadingOnly = map[string]bool{
	"MaxConnections": true, "InitialR2T": true, "ImmediateData": true, "MaxBurstLength": true,
	"FirstBurstLength": true, "DefaultTime2Wait": true, "DefaultTime2Retain": true,
	"MaxOutstandingR2T": true, "DataPDUInOrder": true, "DataSequenceInOrder": true,
	"ErrorRecoveryLevel": true, "SessionType": true,
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
	}
	if n.leading {
		kvs = append(kvs,
			kv("DefaultTime2Wait", strconv.Itoa(o.DefaultTime2Wait)),
			kv("DefaultTime2Retain", strconv.Itoa(o.DefaultTime2Retain)),
			kv("ErrorRecoveryLevel", strconv.Itoa(o.ErrorRecoveryLevel)),
		)
	}
	if n.leading && !n.discovery {
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

// intKey is a numerical key negotiated with a minimum or maximum function.
type intKey struct {
	max bool // a maximum function (DefaultTime2Wait); otherwise minimum
	get func(*Params) *int
}

var intKeys = map[string]intKey{
	"MaxConnections":     {get: func(p *Params) *int { return &p.MaxConnections }},
	"MaxBurstLength":     {get: func(p *Params) *int { return &p.MaxBurstLength }},
	"FirstBurstLength":   {get: func(p *Params) *int { return &p.FirstBurstLength }},
	"MaxOutstandingR2T":  {get: func(p *Params) *int { return &p.MaxOutstandingR2T }},
	"DefaultTime2Retain": {get: func(p *Params) *int { return &p.DefaultTime2Retain }},
	"ErrorRecoveryLevel": {get: func(p *Params) *int { return &p.ErrorRecoveryLevel }},
	"DefaultTime2Wait":   {max: true, get: func(p *Params) *int { return &p.DefaultTime2Wait }},
}

func (k intKey) combine(a, b int) int {
	if k.max {
		return max(a, b)
	}
	return min(a, b)
}

// boolKey is a Boolean key negotiated with AND or OR.
type boolKey struct {
	and bool // ImmediateData; the others are OR
	get func(*Params) *bool
}

var boolKeys = map[string]boolKey{
	"ImmediateData":       {and: true, get: func(p *Params) *bool { return &p.ImmediateData }},
	"InitialR2T":          {get: func(p *Params) *bool { return &p.InitialR2T }},
	"DataPDUInOrder":      {get: func(p *Params) *bool { return &p.DataPDUInOrder }},
	"DataSequenceInOrder": {get: func(p *Params) *bool { return &p.DataSequenceInOrder }},
}

func (k boolKey) combine(a, b bool) bool {
	if k.and {
		return a && b
	}
	return a || b
}

// apply takes one key the target sent in the operational stage. It returns a
// reply to send when the target offered a key we did not (nil otherwise).
func (n *negotiator) apply(key, v string) (*kvPair, error) {
	offered := n.pending[key]
	delete(n.pending, key)
	r := &n.result
	o := &n.offer
	switch key {
	case "TargetPortalGroupTag", "TargetAlias", "TargetAddress",
		"SessionType", "TargetName", "InitiatorName", "InitiatorAlias", "AuthMethod":
		// Declarations (which a target may repeat), or echoes.
	default:
		if !n.leading && leadingOnly[key] {
			// Session-wide keys are settled on the leading connection; a
			// target offering one here gets no new value from us, and may
			// answer our Irrelevant (tgtd answers Reject).
			if offered || n.seen[key] || v == "NotUnderstood" || v == "Irrelevant" || v == "Reject" {
				n.seen[key] = true
				return nil, nil
			}
			n.seen[key] = true
			return &kvPair{Key: key, Value: "Irrelevant"}, nil
		}
		if n.seen[key] {
			return nil, &NegotiationError{Key: key, Reason: "target negotiated the key a second time"}
		}
		n.seen[key] = true
	}
	if v == "NotUnderstood" || v == "Irrelevant" || v == "Reject" {
		if !offered {
			return nil, &NegotiationError{Key: key, Reason: "target answered " + v + " to a key we did not offer"}
		}
		// The target's side keeps the RFC default; our result is what our
		// offer and that default make.
		d := rfcDefaults()
		if k, ok := boolKeys[key]; ok {
			*k.get(r) = k.combine(*k.get(o), *k.get(&d))
		} else if k, ok := intKeys[key]; ok {
			*k.get(r) = k.combine(*k.get(o), *k.get(&d))
		}
		return nil, nil
	}
	var err error
	var reply string
	switch key {
	case "HeaderDigest", "DataDigest":
		mine := o.HeaderDigest
		if key == "DataDigest" {
			mine = o.DataDigest
		}
		var on bool
		switch {
		case offered && v == "CRC32C":
			if !mine {
				return nil, &NegotiationError{Key: key, Reason: "target chose CRC32C, which we did not offer"}
			}
			on = true
		case offered && v == "None":
		case offered:
			return nil, &NegotiationError{Key: key, Reason: "target chose " + strconvQuote(v) + ", not in our list"}
		default:
			// The target offers a list: pick what we want from it.
			want := "None"
			if mine && listHas(v, "CRC32C") {
				want, on = "CRC32C", true
			}
			if !listHas(v, want) {
				return nil, &NegotiationError{Key: key, Reason: "no common digest in " + strconvQuote(v)}
			}
			reply = want
		}
		if key == "HeaderDigest" {
			r.HeaderDigest = on
		} else {
			r.DataDigest = on
		}
	case "MaxRecvDataSegmentLength":
		r.TargetMaxRecvDataSegmentLength, err = n.number(key, v)
	case "MaxConnections", "MaxBurstLength", "FirstBurstLength", "MaxOutstandingR2T", "DefaultTime2Retain", "ErrorRecoveryLevel", "DefaultTime2Wait":
		k := intKeys[key]
		var x int
		if x, err = n.number(key, v); err != nil {
			break
		}
		mine := *k.get(o)
		if offered && k.combine(x, mine) != x {
			return nil, &NegotiationError{Key: key, Reason: fmt.Sprintf("target answered %d to our offer %d, against the %s function", x, mine, map[bool]string{false: "minimum", true: "maximum"}[k.max])}
		}
		x = k.combine(x, mine)
		if !offered {
			reply = strconv.Itoa(x)
		}
		*k.get(r) = x
	case "InitialR2T", "DataPDUInOrder", "DataSequenceInOrder", "ImmediateData":
		k := boolKeys[key]
		var b bool
		if b, err = pdu.ParseBool(v); err != nil {
			return nil, &NegotiationError{Key: key, Reason: err.Error()}
		}
		mine := *k.get(o)
		res := k.combine(b, mine)
		if offered && res != b {
			return nil, &NegotiationError{Key: key, Reason: fmt.Sprintf("target answered %s to our %s", pdu.FormatBool(b), pdu.FormatBool(mine))}
		}
		if !offered {
			reply = pdu.FormatBool(res)
		}
		*k.get(r) = res
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
	if n.discovery || !n.leading {
		return r, nil
	}
	// A key we offered that the target never answered: RFC 7143 §6.2.2
	// lets it stay silent where our offer alone decides (a Boolean AND
	// offered as No, an OR offered as Yes; LIO does so). The outcome is
	// what our offer and the RFC default make, as for Irrelevant.
	d := rfcDefaults()
	for key := range n.pending {
		if k, ok := boolKeys[key]; ok {
			*k.get(&r) = k.combine(*k.get(&n.offer), *k.get(&d))
		} else if k, ok := intKeys[key]; ok {
			*k.get(&r) = k.combine(*k.get(&n.offer), *k.get(&d))
		}
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

func kv(k, v string) kvPair { return kvPair{Key: k, Value: v} }
