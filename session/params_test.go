package session

import (
	"errors"
	"reflect"
	"strconv"
	"testing"

	"github.com/goiscsi/iscsi/internal/faketarget"
	"github.com/goiscsi/iscsi/pdu"
)

// negotiate runs one operational negotiation: the target answers with
// answers, in order. It returns the result and the replies we would send.
func negotiate(offer Params, discovery, leading bool, answers ...pdu.KV) (Params, []pdu.KV, error) {
	n := newNegotiator(offer, discovery, leading)
	n.keys()
	var replies []pdu.KV
	for _, a := range answers {
		r, err := n.apply(a.Key, a.Value)
		if err != nil {
			return Params{}, nil, err
		}
		if r != nil {
			replies = append(replies, *r)
		}
	}
	p, err := n.finish()
	return p, replies, err
}

func kvs(pairs ...string) []pdu.KV {
	var out []pdu.KV
	for i := 0; i+1 < len(pairs); i += 2 {
		out = append(out, pdu.KV{Key: pairs[i], Value: pairs[i+1]})
	}
	return out
}

func TestNegotiationOffers(t *testing.T) {
	o := DefaultParams()
	n := newNegotiator(o, false, true)
	got := map[string]string{}
	for _, p := range n.keys() {
		got[p.Key] = p.Value
	}
	want := map[string]string{
		"HeaderDigest": "None", "DataDigest": "None", "MaxRecvDataSegmentLength": "262144",
		"DefaultTime2Wait": "2", "DefaultTime2Retain": "0", "ErrorRecoveryLevel": strconv.Itoa(implementedERL),
		"MaxConnections": "4", "InitialR2T": "No", "ImmediateData": "Yes", "MaxBurstLength": "1048576",
		"FirstBurstLength": "262144", "MaxOutstandingR2T": "1", "DataPDUInOrder": "Yes", "DataSequenceInOrder": "Yes",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("leading offers %v\nwant %v", got, want)
	}

	o.HeaderDigest = true
	n = newNegotiator(o, true, true)
	got = map[string]string{}
	for _, p := range n.keys() {
		got[p.Key] = p.Value
	}
	want = map[string]string{"HeaderDigest": "CRC32C,None", "DataDigest": "None", "MaxRecvDataSegmentLength": "262144",
		"DefaultTime2Wait": "2", "DefaultTime2Retain": "0", "ErrorRecoveryLevel": strconv.Itoa(implementedERL)}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("discovery offers %v\nwant %v", got, want)
	}

	// A connection added to a session offers its own keys only: the LO
	// keys belong to the leading connection (RFC 7143 §13).
	n = newNegotiator(o, false, false)
	got = map[string]string{}
	for _, p := range n.keys() {
		got[p.Key] = p.Value
		if k, _ := pdu.LookupKey(p.Key); k.LeadingOnly {
			t.Errorf("non-leading connection offers LO key %s", p.Key)
		}
	}
	want = map[string]string{"HeaderDigest": "CRC32C,None", "DataDigest": "None", "MaxRecvDataSegmentLength": "262144"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("non-leading offers %v\nwant %v", got, want)
	}
}

func TestNegotiationResults(t *testing.T) {
	base := DefaultParams()
	base.HeaderDigest, base.DataDigest = true, true
	tests := []struct {
		name    string
		offer   func(*Params)
		answers []pdu.KV
		check   func(Params) bool
	}{
		{"echo keeps our offers", nil, kvs("MaxBurstLength", "1048576", "FirstBurstLength", "262144", "InitialR2T", "No", "ImmediateData", "Yes"),
			func(p Params) bool {
				return p.MaxBurstLength == 1<<20 && p.FirstBurstLength == 256<<10 && !p.InitialR2T && p.ImmediateData
			}},
		{"no declaration means 8192", nil, nil, func(p Params) bool { return p.TargetMaxRecvDataSegmentLength == 8192 }},
		{"declared MaxRecvDataSegmentLength", nil, kvs("MaxRecvDataSegmentLength", "65536"),
			func(p Params) bool {
				return p.TargetMaxRecvDataSegmentLength == 65536 && p.MaxRecvDataSegmentLength == 256<<10
			}},
		{"hex number", nil, kvs("MaxRecvDataSegmentLength", "0x2000"), func(p Params) bool { return p.TargetMaxRecvDataSegmentLength == 8192 }},
		{"min: MaxBurstLength lower", nil, kvs("MaxBurstLength", "262144"), func(p Params) bool { return p.MaxBurstLength == 262144 }},
		{"min: MaxConnections 1", nil, kvs("MaxConnections", "1"), func(p Params) bool { return p.MaxConnections == 1 }},
		{"min: DefaultTime2Retain", nil, kvs("DefaultTime2Retain", "0"), func(p Params) bool { return p.DefaultTime2Retain == 0 }},
		{"max: DefaultTime2Wait higher", nil, kvs("DefaultTime2Wait", "7"), func(p Params) bool { return p.DefaultTime2Wait == 7 }},
		{"FirstBurstLength clamped to MaxBurstLength", nil, kvs("MaxBurstLength", "65536", "FirstBurstLength", "131072"),
			func(p Params) bool { return p.FirstBurstLength == 65536 }},
		{"OR: InitialR2T No answered Yes", nil, kvs("InitialR2T", "Yes"), func(p Params) bool { return p.InitialR2T }},
		{"AND: ImmediateData Yes answered No", nil, kvs("ImmediateData", "No"), func(p Params) bool { return !p.ImmediateData }},
		{"digests both CRC32C", nil, kvs("HeaderDigest", "CRC32C", "DataDigest", "CRC32C"), func(p Params) bool { return p.HeaderDigest && p.DataDigest }},
		{"digests None", nil, kvs("HeaderDigest", "None", "DataDigest", "None"), func(p Params) bool { return !p.HeaderDigest && !p.DataDigest }},
		{"NotUnderstood digest keeps None", nil, kvs("HeaderDigest", "NotUnderstood"), func(p Params) bool { return !p.HeaderDigest }},
		// An answer that leaves the RFC default on the target's side
		// gives what our offer and that default make.
		{"NotUnderstood ImmediateData=No stays No", func(p *Params) { p.ImmediateData = false }, kvs("ImmediateData", "NotUnderstood"),
			func(p Params) bool { return !p.ImmediateData }},
		{"Irrelevant InitialR2T=No means Yes", nil, kvs("InitialR2T", "Irrelevant"), func(p Params) bool { return p.InitialR2T }},
		{"Reject MaxBurstLength means the default", nil, kvs("MaxBurstLength", "Reject"), func(p Params) bool { return p.MaxBurstLength == 262144 }},
		{"Reject DefaultTime2Wait=5 keeps 5", func(p *Params) { p.DefaultTime2Wait = 5 }, kvs("DefaultTime2Wait", "Reject"),
			func(p Params) bool { return p.DefaultTime2Wait == 5 }},
		{"declarations", nil, kvs("TargetPortalGroupTag", "7", "TargetAlias", "disk one"),
			func(p Params) bool { return p.TargetPortalGroupTag == 7 && p.TargetAlias == "disk one" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := base
			if tt.offer != nil {
				tt.offer(&o)
			}
			p, replies, err := negotiate(o, false, true, tt.answers...)
			if err != nil {
				t.Fatalf("negotiate: %v", err)
			}
			if len(replies) != 0 {
				t.Errorf("replies %v to answers", replies)
			}
			if !tt.check(p) {
				t.Errorf("result %+v", p)
			}
		})
	}
}

func TestNegotiationRefused(t *testing.T) {
	none := DefaultParams() // digests None
	crc := DefaultParams()
	crc.HeaderDigest, crc.DataDigest = true, true
	noImm := DefaultParams()
	noImm.ImmediateData = false
	r2t := DefaultParams()
	r2t.InitialR2T = true
	erl0 := DefaultParams()
	erl0.ErrorRecoveryLevel = 0
	tests := []struct {
		name    string
		offer   Params
		answers []pdu.KV
		key     string
	}{
		{"CRC32C when we offered None", none, kvs("HeaderDigest", "CRC32C"), "HeaderDigest"},
		{"data CRC32C when we offered None", none, kvs("DataDigest", "CRC32C"), "DataDigest"},
		{"digest not in our list", crc, kvs("HeaderDigest", "MD5"), "HeaderDigest"},
		{"a list as answer", crc, kvs("DataDigest", "CRC32C,None"), "DataDigest"},
		{"min above our offer", none, kvs("MaxBurstLength", "2097152"), "MaxBurstLength"},
		{"MaxConnections above our offer", none, kvs("MaxConnections", "8"), "MaxConnections"},
		{"ErrorRecoveryLevel above our offer", erl0, kvs("ErrorRecoveryLevel", "1"), "ErrorRecoveryLevel"},
		{"max below our offer", none, kvs("DefaultTime2Wait", "1"), "DefaultTime2Wait"},
		{"MaxRecvDataSegmentLength under 512", none, kvs("MaxRecvDataSegmentLength", "511"), "MaxRecvDataSegmentLength"},
		{"MaxRecvDataSegmentLength over 2^24-1", none, kvs("MaxRecvDataSegmentLength", "16777216"), "MaxRecvDataSegmentLength"},
		{"MaxBurstLength under 512", none, kvs("MaxBurstLength", "100"), "MaxBurstLength"},
		{"MaxOutstandingR2T 0", none, kvs("MaxOutstandingR2T", "0"), "MaxOutstandingR2T"},
		{"MaxConnections 0", none, kvs("MaxConnections", "0"), "MaxConnections"},
		{"ErrorRecoveryLevel 3", none, kvs("ErrorRecoveryLevel", "3"), "ErrorRecoveryLevel"},
		{"DefaultTime2Wait over 3600", none, kvs("DefaultTime2Wait", "3601"), "DefaultTime2Wait"},
		{"not a number", none, kvs("MaxBurstLength", "lots"), "MaxBurstLength"},
		{"number over 64 bits", none, kvs("MaxBurstLength", "99999999999999999999999"), "MaxBurstLength"},
		{"TargetPortalGroupTag over 65535", none, kvs("TargetPortalGroupTag", "65536"), "TargetPortalGroupTag"},
		{"AND: Yes to our No", noImm, kvs("ImmediateData", "Yes"), "ImmediateData"},
		{"OR: No to our Yes", r2t, kvs("InitialR2T", "No"), "InitialR2T"},
		{"OR: DataPDUInOrder No to our Yes", none, kvs("DataPDUInOrder", "No"), "DataPDUInOrder"},
		{"Boolean in lower case", none, kvs("ImmediateData", "yes"), "ImmediateData"},
		{"NotUnderstood for a key we did not offer", none, kvs("MaxCommandsInFlight", "NotUnderstood"), "MaxCommandsInFlight"},
		{"Reject for a key we did not offer", none, kvs("IFMarker", "Reject"), "IFMarker"},
		{"key negotiated twice", none, kvs("MaxBurstLength", "65536", "MaxBurstLength", "65536"), "MaxBurstLength"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := negotiate(tt.offer, false, true, tt.answers...)
			var ne *NegotiationError
			if !errors.As(err, &ne) {
				t.Fatalf("err %v: want a *NegotiationError", err)
			}
			if ne.Key != tt.key {
				t.Errorf("NegotiationError key %q (%v), want %q", ne.Key, ne, tt.key)
			}
		})
	}
}

// Keys the target offers on its own get an answer.
func TestNegotiationTargetOffers(t *testing.T) {
	o := DefaultParams()
	o.HeaderDigest = true
	tests := []struct {
		name      string
		discovery bool
		leading   bool
		offer     pdu.KV
		reply     string
		check     func(Params) bool
	}{
		{"MaxBurstLength in a discovery session", true, true, pdu.KV{Key: "MaxBurstLength", Value: "2097152"}, "1048576",
			func(p Params) bool { return p.MaxBurstLength == 1<<20 }},
		{"DefaultTime2Wait lower than ours", true, true, pdu.KV{Key: "DefaultTime2Wait", Value: "0"}, "",
			nil}, // offered in discovery: this is an answer, and below our offer
		{"InitialR2T Yes", true, true, pdu.KV{Key: "InitialR2T", Value: "Yes"}, "Yes", func(p Params) bool { return p.InitialR2T }},
		{"ImmediateData Yes", true, true, pdu.KV{Key: "ImmediateData", Value: "Yes"}, "Yes", func(p Params) bool { return p.ImmediateData }},
		{"unknown key", false, true, pdu.KV{Key: "X-com.example.Frobnicate", Value: "on"}, "NotUnderstood", nil},
		{"RFC 7143 key we do not know", false, true, pdu.KV{Key: "iSCSIProtocolLevel", Value: "1"}, "NotUnderstood", nil},
		{"IFMarker", false, true, pdu.KV{Key: "IFMarker", Value: "Yes"}, "No", nil},
		{"OFMarkInt", false, true, pdu.KV{Key: "OFMarkInt", Value: "2048~8192"}, "Irrelevant", nil},
		{"LO key on an added connection", false, false, pdu.KV{Key: "MaxBurstLength", Value: "65536"}, "Irrelevant",
			func(p Params) bool { return true }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, replies, err := negotiate(o, tt.discovery, tt.leading, tt.offer)
			if tt.reply == "" {
				if err == nil {
					t.Fatalf("no error; replies %v", replies)
				}
				return
			}
			if err != nil {
				t.Fatalf("negotiate: %v", err)
			}
			want := []pdu.KV{{Key: tt.offer.Key, Value: tt.reply}}
			if !reflect.DeepEqual(replies, want) {
				t.Errorf("replies %v, want %v", replies, want)
			}
			if tt.check != nil && !tt.check(p) {
				t.Errorf("result %+v", p)
			}
		})
	}

	// A digest list the target offers: we take CRC32C where we want it.
	n := newNegotiator(o, false, true)
	delete(n.pending, "HeaderDigest")
	r, err := n.apply("HeaderDigest", "CRC32C,None")
	if err != nil || r == nil || r.Value != "CRC32C" || !n.result.HeaderDigest {
		t.Errorf("HeaderDigest offer: reply %v, err %v, result %v", r, err, n.result.HeaderDigest)
	}
	delete(n.pending, "DataDigest")
	r, err = n.apply("DataDigest", "CRC32C,None")
	if err != nil || r == nil || r.Value != "None" || n.result.DataDigest {
		t.Errorf("DataDigest offer: reply %v, err %v, result %v", r, err, n.result.DataDigest)
	}
}

// The operational stage over the wire: a target offering a key of its own
// gets our answer in the next Login Request, and a target answering CRC32C
// to our None fails the login with the key named.
func TestLoginNegotiationOverTheWire(t *testing.T) {
	s, _ := fakeSession(t, testConfig(), faketarget.Login{
		Answers: map[string]string{"MaxBurstLength": "131072", "ImmediateData": "No"},
		Offers:  kvs("X-com.example.Vendor", "1"),
		TSIH:    0x42, TargetMRDSL: 16384,
	})
	p := s.Params()
	if p.MaxBurstLength != 131072 || p.ImmediateData || p.TargetMaxRecvDataSegmentLength != 16384 || p.TargetPortalGroupTag != 1 {
		t.Errorf("Params %+v", p)
	}
	if s.TSIH() != 0x42 {
		t.Errorf("TSIH %#x", s.TSIH())
	}
	if c := s.Conns()[0]; c.Params() != p {
		t.Errorf("connection Params %+v differ from the session's %+v", c.Params(), p)
	}

	cfg := testConfig()
	err := fakeLoginErr(t, cfg, func(f *faketarget.Target) error {
		return f.ServeLogin(faketarget.Login{Answers: map[string]string{"HeaderDigest": "CRC32C"}})
	})
	var ne *NegotiationError
	if !errors.As(err, &ne) || ne.Key != "HeaderDigest" {
		t.Fatalf("Login with CRC32C forced on us: %v, want a NegotiationError on HeaderDigest", err)
	}
}

// A target may leave out its answer where our offer alone decides (RFC 7143
// §6.2.2), as LIO does for ImmediateData=No: the outcome is our offer, not
// the RFC default.
func TestNegotiationUnansweredKeys(t *testing.T) {
	o := DefaultParams()
	o.ImmediateData, o.InitialR2T, o.DataPDUInOrder = false, true, true
	p, _, err := negotiate(o, false, true, kvs("HeaderDigest", "None", "DataDigest", "None")...)
	if err != nil {
		t.Fatal(err)
	}
	if p.ImmediateData || !p.InitialR2T || !p.DataPDUInOrder {
		t.Fatalf("unanswered ImmediateData=No/InitialR2T=Yes/DataPDUInOrder=Yes gave %v/%v/%v", p.ImmediateData, p.InitialR2T, p.DataPDUInOrder)
	}
	// Numbers left unanswered fall back to what our offer and the RFC
	// default make: never more than the default allows.
	if p.MaxBurstLength != 262144 || p.FirstBurstLength != 65536 || p.MaxConnections != 1 {
		t.Fatalf("unanswered numbers: MaxBurstLength %d FirstBurstLength %d MaxConnections %d", p.MaxBurstLength, p.FirstBurstLength, p.MaxConnections)
	}
}

// On an added connection tgtd offers MaxConnections, we answer Irrelevant,
// and it answers Reject: that is no second negotiation of the key.
func TestNegotiationLeadingOnlyOnAddedConnection(t *testing.T) {
	_, replies, err := negotiate(DefaultParams(), false, false, kvs("MaxConnections", "4", "MaxConnections", "Reject")...)
	if err != nil {
		t.Fatal(err)
	}
	if len(replies) != 1 || replies[0] != (pdu.KV{Key: "MaxConnections", Value: "Irrelevant"}) {
		t.Fatalf("replies %v", replies)
	}
}
