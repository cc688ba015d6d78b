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
	// ErrorRecoveryLevel may be offered up to what the package implements
	// (implementedERL, 2, which DefaultParams offers): Login refuses a
	// higher one with ErrInvalidConfig. The target's answer (the minimum of
	// both) is the session's: at 1, a data digest error on a Data-In is
	// recovered with a SNACK, and a Data-Out the target rejects for its
	// data digest is sent again (snack.go); at 2, the commands of a
	// connection lost while others are up move to another with TASK
	// REASSIGN (connrecovery.go), which needs DefaultTime2Retain > 0.
	ErrorRecoveryLevel int
	// TargetPortalGroupTag and TargetAlias are what the target declared.
	TargetPortalGroupTag int
	TargetAlias          string
}

// DefaultParams are the initiator's default offers: RFC 7143 defaults, except
// a larger receive segment and burst, ImmediateData with InitialR2T=No to
// save a round trip per write where the target agrees, and
// DefaultTime2Retain 0 (as open-iscsi offers), and the highest
// ErrorRecoveryLevel the package implements. A retain time only keeps a
// session's state at the target after its connections ended: LIO keeps a
// session whose last connection logged out with reason 1 for that long.
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
		ErrorRecoveryLevel:             implementedERL,
	}
}

// implementedERL is the highest ErrorRecoveryLevel this package implements,
// and so offers by default: 2, connection recovery (TASK REASSIGN,
// connrecovery.go) on top of 1, within-connection recovery with SNACK
// (snack.go).
const implementedERL = 2

// ErrInvalidConfig is wrapped by the errors about a Config the package
// cannot log in with, such as a parameter it does not implement.
var ErrInvalidConfig = errors.New("iscsi: invalid configuration")

// check refuses offers the initiator could not honour: an offer is a
// promise to the target.
func (p Params) check() error {
	if p.ErrorRecoveryLevel < 0 || p.ErrorRecoveryLevel > 2 {
		return fmt.Errorf("%w: ErrorRecoveryLevel %d is outside 0-2 (RFC 7143 §13.20)", ErrInvalidConfig, p.ErrorRecoveryLevel)
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

// intFields and boolFields are the Params fields of the numerical and
// Boolean keys the initiator negotiates; how each is negotiated (minimum or
// maximum, AND or OR), its range and default are pdu's RFC 7143 table.
var intFields = map[string]func(*Params) *int{
	"MaxConnections":     func(p *Params) *int { return &p.MaxConnections },
	"MaxBurstLength":     func(p *Params) *int { return &p.MaxBurstLength },
	"FirstBurstLength":   func(p *Params) *int { return &p.FirstBurstLength },
	"MaxOutstandingR2T":  func(p *Params) *int { return &p.MaxOutstandingR2T },
	"DefaultTime2Retain": func(p *Params) *int { return &p.DefaultTime2Retain },
	"ErrorRecoveryLevel": func(p *Params) *int { return &p.ErrorRecoveryLevel },
	"DefaultTime2Wait":   func(p *Params) *int { return &p.DefaultTime2Wait },
}

var boolFields = map[string]func(*Params) *bool{
	"ImmediateData":       func(p *Params) *bool { return &p.ImmediateData },
	"InitialR2T":          func(p *Params) *bool { return &p.InitialR2T },
	"DataPDUInOrder":      func(p *Params) *bool { return &p.DataPDUInOrder },
	"DataSequenceInOrder": func(p *Params) *bool { return &p.DataSequenceInOrder },
}

// combineInt is a numerical key's result function.
func combineInt(k pdu.Key, a, b int) int {
	if k.Kind == pdu.KeyMax {
		return max(a, b)
	}
	return min(a, b)
}

// combineBool is a Boolean key's result function.
func combineBool(k pdu.Key, a, b bool) bool {
	if k.Kind == pdu.KeyAnd {
		return a && b
	}
	return a || b
}

// number parses a numerical value within the key's range.
func number(key string, k pdu.Key, v string) (int, error) {
	x, err := parseNum(v)
	if err != nil || x < k.Min || x > k.Max {
		return 0, &NegotiationError{Key: key, Reason: fmt.Sprintf("value %q outside %d-%d", v, k.Min, k.Max)}
	}
	return int(x), nil
}

// settle sets a key the target did not take up (it answered Irrelevant,
// NotUnderstood or Reject, or stayed silent where RFC 7143 §6.2.2 lets it)
// to what our offer and the RFC default make.
func (n *negotiator) settle(r *Params, key string) {
	k, _ := pdu.LookupKey(key)
	d := rfcDefaults()
	if f, ok := boolFields[key]; ok {
		*f(r) = combineBool(k, *f(&n.offer), *f(&d))
	} else if f, ok := intFields[key]; ok {
		*f(r) = combineInt(k, *f(&n.offer), *f(&d))
	}
}

// apply takes one key the target sent in the operational stage. It returns a
// reply to send when the target offered a key we did not (nil otherwise).
func (n *negotiator) apply(key, v string) (*kvPair, error) {
	offered := n.pending[key]
	delete(n.pending, key)
	k, known := pdu.LookupKey(key)
	if reply, done, err := n.once(key, k, v, offered); done {
		return reply, err
	}
	if v == "NotUnderstood" || v == "Irrelevant" || v == "Reject" {
		if !offered {
			return nil, &NegotiationError{Key: key, Reason: "target answered " + v + " to a key we did not offer"}
		}
		// The target's side keeps the RFC default.
		n.settle(&n.result, key)
		return nil, nil
	}
	var reply string
	var err error
	switch {
	case !known:
		if !offered {
			reply = "NotUnderstood"
		}
	case k.Kind == pdu.KeyDigest:
		reply, err = n.digest(key, v, offered)
	case k.Kind == pdu.KeyMRDSL:
		n.result.TargetMaxRecvDataSegmentLength, err = number(key, k, v)
	case intFields[key] != nil:
		reply, err = n.numeric(key, k, v, offered)
	case boolFields[key] != nil:
		reply, err = n.boolean(key, k, v, offered)
	case key == "TargetPortalGroupTag":
		n.result.TargetPortalGroupTag, err = number(key, k, v)
	case key == "TargetAlias":
		n.result.TargetAlias = v
	case k.Kind == pdu.KeyObsolete:
		// RFC 3720's markers: we do not do them.
		reply = "No"
		if key == "IFMarkInt" || key == "OFMarkInt" {
			reply = "Irrelevant"
		}
	case k.Kind == pdu.KeyTargetOnly, k.Kind == pdu.KeyDeclared, k.Kind == pdu.KeyAlias, key == "AuthMethod":
		// TargetAddress (meaningful with a redirect only), declarations
		// already made in the security stage, echoes.
	default:
		// Keys the initiator has no use for (iSCSIProtocolLevel,
		// TaskReporting, the CHAP keys and SendTargets here).
		if !offered {
			reply = "NotUnderstood"
		}
	}
	if err != nil || reply == "" {
		return nil, err
	}
	return &kvPair{Key: key, Value: reply}, nil
}

// once applies the rule that a key is negotiated once per login (RFC 7143
// §6.2), and that a connection added to a session leaves the session-wide
// (LO) keys alone. done means apply has nothing more to do.
func (n *negotiator) once(key string, k pdu.Key, v string, offered bool) (reply *kvPair, done bool, err error) {
	if k.Kind == pdu.KeyTargetOnly || k.Kind == pdu.KeyDeclared || k.Kind == pdu.KeyAlias || key == "AuthMethod" {
		// Declarations (which a target may repeat), or echoes.
		return nil, false, nil
	}
	if !n.leading && k.LeadingOnly && (intFields[key] != nil || boolFields[key] != nil) {
		// Session-wide keys are settled on the leading connection; a
		// target offering one here gets no new value from us, and may
		// answer our Irrelevant (tgtd answers Reject).
		if offered || n.seen[key] || v == "NotUnderstood" || v == "Irrelevant" || v == "Reject" {
			n.seen[key] = true
			return nil, true, nil
		}
		n.seen[key] = true
		return &kvPair{Key: key, Value: "Irrelevant"}, true, nil
	}
	if n.seen[key] {
		return nil, true, &NegotiationError{Key: key, Reason: "target negotiated the key a second time"}
	}
	n.seen[key] = true
	return nil, false, nil
}

// digest takes HeaderDigest or DataDigest: the target's choice from our
// list, or its own list, from which we choose.
func (n *negotiator) digest(key, v string, offered bool) (reply string, err error) {
	mine := n.offer.HeaderDigest
	if key == "DataDigest" {
		mine = n.offer.DataDigest
	}
	var on bool
	switch {
	case offered && v == "CRC32C":
		if !mine {
			return "", &NegotiationError{Key: key, Reason: "target chose CRC32C, which we did not offer"}
		}
		on = true
	case offered && v == "None":
	case offered:
		return "", &NegotiationError{Key: key, Reason: "target chose " + strconvQuote(v) + ", not in our list"}
	default:
		// The target offers a list: pick what we want from it.
		want := "None"
		if mine && listHas(v, "CRC32C") {
			want, on = "CRC32C", true
		}
		if !listHas(v, want) {
			return "", &NegotiationError{Key: key, Reason: "no common digest in " + strconvQuote(v)}
		}
		reply = want
	}
	if key == "HeaderDigest" {
		n.result.HeaderDigest = on
	} else {
		n.result.DataDigest = on
	}
	return reply, nil
}

// numeric takes a key negotiated with the minimum or maximum function: an
// answer to our offer must respect it; an offer of the target's gets our
// result as the reply.
func (n *negotiator) numeric(key string, k pdu.Key, v string, offered bool) (reply string, err error) {
	field := intFields[key]
	x, err := number(key, k, v)
	if err != nil {
		return "", err
	}
	mine := *field(&n.offer)
	if offered && combineInt(k, x, mine) != x {
		fn := "minimum"
		if k.Kind == pdu.KeyMax {
			fn = "maximum"
		}
		return "", &NegotiationError{Key: key, Reason: fmt.Sprintf("target answered %d to our offer %d, against the %s function", x, mine, fn)}
	}
	x = combineInt(k, x, mine)
	*field(&n.result) = x
	if !offered {
		reply = strconv.Itoa(x)
	}
	return reply, nil
}

// boolean takes a key negotiated with AND or OR, as numeric does.
func (n *negotiator) boolean(key string, k pdu.Key, v string, offered bool) (reply string, err error) {
	field := boolFields[key]
	b, err := pdu.ParseBool(v)
	if err != nil {
		return "", &NegotiationError{Key: key, Reason: err.Error()}
	}
	mine := *field(&n.offer)
	res := combineBool(k, b, mine)
	if offered && res != b {
		return "", &NegotiationError{Key: key, Reason: fmt.Sprintf("target answered %s to our %s", pdu.FormatBool(b), pdu.FormatBool(mine))}
	}
	*field(&n.result) = res
	if !offered {
		reply = pdu.FormatBool(res)
	}
	return reply, nil
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
	for key := range n.pending {
		n.settle(&r, key)
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
