package iscsitest

import (
	"slices"
	"strconv"

	"github.com/goiscsi/iscsi/pdu"
)

// keyKind says how a login key is negotiated (RFC 7143 §6.2, §13).
type keyKind uint8

const (
	kindDeclared      keyKind = iota // declared by the initiator in its first request
	kindAlias                        // InitiatorAlias: declared by the initiator, any time
	kindTargetOnly                   // only a target sends it
	kindSecurity                     // security stage only
	kindFFPOnly                      // full feature phase only
	kindMin                          // numerical, result is the minimum
	kindMax                          // numerical, result is the maximum
	kindOr                           // boolean, result is OR
	kindAnd                          // boolean, result is AND
	kindDigest                       // list of None/CRC32C, the first acceptable wins
	kindMRDSL                        // MaxRecvDataSegmentLength, declarative
	kindTaskReporting                // list, RFC3720 only
	kindObsolete                     // the RFC 3720 marker keys: answered Reject (§13.26)
)

type keyDef struct {
	kind keyKind
	// lo marks a leading-only key, irrelevant on a connection that joins a
	// session; irrDisc a key irrelevant to discovery sessions.
	lo, irrDisc bool
	lo64, hi64  uint64 // valid range of a numerical key
	def         string // the RFC default, for the target's own offers
}

var keyTable = map[string]keyDef{
	"InitiatorName":            {kind: kindDeclared},
	"TargetName":               {kind: kindDeclared},
	"SessionType":              {kind: kindDeclared, lo: true},
	"InitiatorAlias":           {kind: kindAlias},
	"TargetAlias":              {kind: kindTargetOnly},
	"TargetAddress":            {kind: kindTargetOnly},
	"TargetPortalGroupTag":     {kind: kindTargetOnly},
	"AuthMethod":               {kind: kindSecurity},
	"CHAP_A":                   {kind: kindSecurity},
	"CHAP_I":                   {kind: kindSecurity},
	"CHAP_C":                   {kind: kindSecurity},
	"CHAP_N":                   {kind: kindSecurity},
	"CHAP_R":                   {kind: kindSecurity},
	"SendTargets":              {kind: kindFFPOnly},
	"HeaderDigest":             {kind: kindDigest, def: "None"},
	"DataDigest":               {kind: kindDigest, def: "None"},
	"MaxRecvDataSegmentLength": {kind: kindMRDSL, lo64: 512, hi64: pdu.MaxDataSegmentLength, def: "8192"},
	"MaxConnections":           {kind: kindMin, lo: true, irrDisc: true, lo64: 1, hi64: 65535, def: "1"},
	"InitialR2T":               {kind: kindOr, lo: true, irrDisc: true, def: "Yes"},
	"ImmediateData":            {kind: kindAnd, lo: true, irrDisc: true, def: "Yes"},
	"MaxBurstLength":           {kind: kindMin, lo: true, irrDisc: true, lo64: 512, hi64: pdu.MaxDataSegmentLength, def: "262144"},
	"FirstBurstLength":         {kind: kindMin, lo: true, irrDisc: true, lo64: 512, hi64: pdu.MaxDataSegmentLength, def: "65536"},
	"DefaultTime2Wait":         {kind: kindMax, lo: true, lo64: 0, hi64: 3600, def: "2"},
	"DefaultTime2Retain":       {kind: kindMin, lo: true, lo64: 0, hi64: 3600, def: "20"},
	"MaxOutstandingR2T":        {kind: kindMin, lo: true, irrDisc: true, lo64: 1, hi64: 65535, def: "1"},
	"DataPDUInOrder":           {kind: kindOr, lo: true, irrDisc: true, def: "Yes"},
	"DataSequenceInOrder":      {kind: kindOr, lo: true, irrDisc: true, def: "Yes"},
	"ErrorRecoveryLevel":       {kind: kindMin, lo: true, lo64: 0, hi64: 2, def: "0"},
	"TaskReporting":            {kind: kindTaskReporting, lo: true, irrDisc: true, def: "RFC3720"},
	"iSCSIProtocolLevel":       {kind: kindMin, lo: true, lo64: 0, hi64: 31, def: "0"},
	"IFMarker":                 {kind: kindObsolete},
	"OFMarker":                 {kind: kindObsolete},
	"IFMarkInt":                {kind: kindObsolete},
	"OFMarkInt":                {kind: kindObsolete},
}

func keyKnown(k string) bool { _, ok := keyTable[k]; return ok }

// defaultParams are RFC 7143's defaults, what a session has for every key
// nobody negotiated.
func defaultParams() Params {
	return Params{MaxConnections: 1, InitialR2T: true, ImmediateData: true, MaxBurstLength: 262144,
		FirstBurstLength: 65536, DefaultTime2Wait: 2, DefaultTime2Retain: 20, MaxOutstandingR2T: 1,
		DataPDUInOrder: true, DataSequenceInOrder: true}
}

// ours returns the target's value of a negotiated key.
func (l *login) ours(key string) string {
	c := &l.t.Config
	switch key {
	case "MaxConnections":
		return strconv.Itoa(c.MaxConnections)
	case "InitialR2T":
		return pdu.FormatBool(c.InitialR2T)
	case "ImmediateData":
		return pdu.FormatBool(c.ImmediateData)
	case "MaxBurstLength":
		return strconv.Itoa(c.MaxBurstLength)
	case "FirstBurstLength":
		return strconv.Itoa(c.FirstBurstLength)
	case "MaxOutstandingR2T":
		return strconv.Itoa(c.MaxOutstandingR2T)
	case "iSCSIProtocolLevel":
		return "1" // RFC 7143
	}
	return keyTable[key].def
}

// set records a negotiated result.
func (l *login) set(key, v string) {
	n, _ := strconv.Atoi(v)
	b := v == "Yes"
	p := &l.params
	switch key {
	case "HeaderDigest":
		l.hdig = v == "CRC32C"
	case "DataDigest":
		l.ddig = v == "CRC32C"
	case "MaxConnections":
		p.MaxConnections = n
	case "InitialR2T":
		p.InitialR2T = b
	case "ImmediateData":
		p.ImmediateData = b
	case "MaxBurstLength":
		p.MaxBurstLength = n
	case "FirstBurstLength":
		p.FirstBurstLength = n
	case "DefaultTime2Wait":
		p.DefaultTime2Wait = n
	case "DefaultTime2Retain":
		p.DefaultTime2Retain = n
	case "MaxOutstandingR2T":
		p.MaxOutstandingR2T = n
	case "DataPDUInOrder":
		p.DataPDUInOrder = b
	case "DataSequenceInOrder":
		p.DataSequenceInOrder = b
	case "ErrorRecoveryLevel":
		p.ErrorRecoveryLevel = n
	}
}

func (l *login) digests(key string) []string {
	if key == "HeaderDigest" {
		return l.t.Config.HeaderDigests
	}
	return l.t.Config.DataDigests
}

// negotiate answers an operational key the initiator offers; "" means no
// answer is due (a declaration).
func (l *login) negotiate(key, val string, d keyDef) string {
	switch d.kind {
	case kindObsolete:
		return "Reject"
	case kindTaskReporting:
		if slices.Contains(pdu.ParseList(val), "RFC3720") {
			return "RFC3720"
		}
		return "Reject"
	case kindDigest:
		for _, v := range pdu.ParseList(val) {
			if slices.Contains(l.digests(key), v) {
				l.set(key, v)
				return v
			}
		}
		return "Reject"
	case kindMRDSL:
		n, err := pdu.ParseNumber(val)
		if err != nil || n < d.lo64 || n > d.hi64 {
			return "Reject"
		}
		l.maxSend = int(n)
		return ""
	case kindMin, kindMax:
		n, err := pdu.ParseNumber(val)
		if err != nil || n < d.lo64 || n > d.hi64 {
			return "Reject"
		}
		o, _ := strconv.ParseUint(l.ours(key), 10, 64)
		r := min(n, o)
		if d.kind == kindMax {
			r = max(n, o)
		}
		v := strconv.FormatUint(r, 10)
		l.set(key, v)
		return v
	case kindOr, kindAnd:
		b, err := pdu.ParseBool(val)
		if err != nil {
			return "Reject"
		}
		o := l.ours(key) == "Yes"
		r := b || o
		if d.kind == kindAnd {
			r = b && o
		}
		v := pdu.FormatBool(r)
		l.set(key, v)
		return v
	}
	return "NotUnderstood"
}

// accept takes the initiator's answer to a key the target offered; it
// reports false for an answer that breaks the key's result function.
func (l *login) accept(key, offered, answer string) bool {
	d := keyTable[key]
	if answer == "Irrelevant" {
		return true
	}
	switch d.kind {
	case kindDigest:
		if !slices.Contains(pdu.ParseList(offered), answer) {
			return false
		}
		l.set(key, answer)
		return true
	case kindMin, kindMax:
		n, err := pdu.ParseNumber(answer)
		o, _ := strconv.ParseUint(offered, 10, 64)
		if err != nil || n < d.lo64 || n > d.hi64 || d.kind == kindMin && n > o || d.kind == kindMax && n < o {
			return false
		}
		l.set(key, strconv.FormatUint(n, 10))
		return true
	case kindOr, kindAnd:
		b, err := pdu.ParseBool(answer)
		o := offered == "Yes"
		if err != nil || d.kind == kindOr && o && !b || d.kind == kindAnd && !o && b {
			return false
		}
		l.set(key, answer)
		return true
	}
	return false
}

// offers returns the keys the target must propose itself before full
// feature phase, because its value would change the result and the
// initiator has not offered them (as tgtd does).
func (l *login) offers() []pdu.KV {
	var out []pdu.KV
	offer := func(key, v string) {
		if l.negotiated[key] {
			return
		}
		l.negotiated[key] = true
		l.offered[key] = v
		out = append(out, pdu.KV{Key: key, Value: v})
	}
	for _, key := range []string{"HeaderDigest", "DataDigest"} {
		if !slices.Contains(l.digests(key), "None") {
			offer(key, "CRC32C")
		}
	}
	if l.discovery || !l.leading {
		return out
	}
	c := &l.t.Config
	if !c.ImmediateData {
		offer("ImmediateData", "No")
	}
	if c.MaxBurstLength < 262144 {
		offer("MaxBurstLength", strconv.Itoa(c.MaxBurstLength))
	}
	if c.FirstBurstLength < 65536 {
		offer("FirstBurstLength", strconv.Itoa(c.FirstBurstLength))
	}
	return out
}
