package iscsitest

import (
	"slices"
	"strconv"

	"github.com/goiscsi/iscsi/pdu"
)

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
	case "ErrorRecoveryLevel":
		return strconv.Itoa(min(max(c.ErrorRecoveryLevel, 0), 2))
	case "DefaultTime2Wait":
		if c.DefaultTime2Wait != nil {
			return strconv.Itoa(*c.DefaultTime2Wait)
		}
	case "DefaultTime2Retain":
		if c.DefaultTime2Retain != nil {
			return strconv.Itoa(*c.DefaultTime2Retain)
		}
	}
	d, _ := pdu.LookupKey(key)
	return d.Default
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
func (l *login) negotiate(key, val string, d pdu.Key) string {
	switch d.Kind {
	case pdu.KeyObsolete:
		return "Reject"
	case pdu.KeyTaskReporting:
		if slices.Contains(pdu.ParseList(val), "RFC3720") {
			return "RFC3720"
		}
		return "Reject"
	case pdu.KeyDigest:
		for _, v := range pdu.ParseList(val) {
			if slices.Contains(l.digests(key), v) {
				l.set(key, v)
				return v
			}
		}
		return "Reject"
	case pdu.KeyMRDSL:
		n, err := pdu.ParseNumber(val)
		if err != nil || n < d.Min || n > d.Max {
			return "Reject"
		}
		l.maxSend = int(n)
		return ""
	case pdu.KeyMin, pdu.KeyMax:
		n, err := pdu.ParseNumber(val)
		if err != nil || n < d.Min || n > d.Max {
			return "Reject"
		}
		o, _ := strconv.ParseUint(l.ours(key), 10, 64)
		r := min(n, o)
		if d.Kind == pdu.KeyMax {
			r = max(n, o)
		}
		v := strconv.FormatUint(r, 10)
		l.set(key, v)
		return v
	case pdu.KeyOr, pdu.KeyAnd:
		b, err := pdu.ParseBool(val)
		if err != nil {
			return "Reject"
		}
		o := l.ours(key) == "Yes"
		r := b || o
		if d.Kind == pdu.KeyAnd {
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
	d, _ := pdu.LookupKey(key)
	if answer == "Irrelevant" {
		return true
	}
	switch d.Kind {
	case pdu.KeyDigest:
		if !slices.Contains(pdu.ParseList(offered), answer) {
			return false
		}
		l.set(key, answer)
		return true
	case pdu.KeyMin, pdu.KeyMax:
		n, err := pdu.ParseNumber(answer)
		o, _ := strconv.ParseUint(offered, 10, 64)
		if err != nil || n < d.Min || n > d.Max || d.Kind == pdu.KeyMin && n > o || d.Kind == pdu.KeyMax && n < o {
			return false
		}
		l.set(key, strconv.FormatUint(n, 10))
		return true
	case pdu.KeyOr, pdu.KeyAnd:
		b, err := pdu.ParseBool(answer)
		o := offered == "Yes"
		if err != nil || d.Kind == pdu.KeyOr && o && !b || d.Kind == pdu.KeyAnd && !o && b {
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
