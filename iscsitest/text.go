package iscsitest

import (
	"strings"

	"github.com/goiscsi/iscsi/pdu"
)

// maxTexts bounds the text exchanges in progress in a session.
const maxTexts = 16

// textState is a text exchange in progress: the request text gathered from
// PDUs with the C bit, or the rest of a response too long for one PDU.
type textState struct {
	req  []byte
	resp []byte
	ttt  uint32
}

func (s *session) text(c *Conn, in *inPDU, v *pdu.TextRequest) {
	st := s.texts[v.ITT]
	if v.TTT != pdu.ReservedTag {
		if st == nil || st.ttt != v.TTT || len(st.resp) == 0 || len(in.data) > 0 {
			c.reject(pdu.RejectInvalidPDUField, &in.h)
			return
		}
		s.textChunk(c, v, st)
		return
	}
	if st == nil || len(st.resp) > 0 {
		if st == nil && len(s.texts) >= maxTexts {
			c.reject(pdu.RejectProtocolError, &in.h)
			return
		}
		st = &textState{}
		s.texts[v.ITT] = st
	}
	if len(st.req)+len(in.data) > maxLoginText || v.Final && v.Continue {
		delete(s.texts, v.ITT)
		c.reject(pdu.RejectProtocolError, &in.h)
		return
	}
	st.req = append(st.req, in.data...)
	if v.Continue {
		c.enqueue(&pdu.TextResponse{LUN: v.LUN, ITT: v.ITT, TTT: pdu.ReservedTag}, nil, nil, false)
		return
	}
	kvs, err := pdu.ParseText(st.req, pdu.TextLimits{})
	st.req = nil
	if err != nil {
		delete(s.texts, v.ITT)
		c.reject(pdu.RejectProtocolError, &in.h)
		return
	}
	var out []byte
	for _, kv := range kvs {
		out = s.textKey(c, kv, out)
	}
	st.resp = out
	s.textChunk(c, v, st)
}

// textKey answers one key of a Text Request in full feature phase.
func (s *session) textKey(c *Conn, kv pdu.KV, out []byte) []byte {
	switch kv.Key {
	case "SendTargets":
		name := s.t.Config.Name
		switch {
		case kv.Value == "All" && !s.discovery:
			return pdu.AppendText(out, pdu.KV{Key: kv.Key, Value: "Reject"})
		case kv.Value == "All" || kv.Value == "" || strings.EqualFold(kv.Value, name):
			return pdu.AppendText(out, pdu.KV{Key: "TargetName", Value: name},
				pdu.KV{Key: "TargetAddress", Value: s.t.portal()})
		}
		return out
	case "MaxRecvDataSegmentLength":
		if n, err := pdu.ParseNumber(kv.Value); err == nil && n >= 512 && n <= pdu.MaxDataSegmentLength {
			c.maxSend = int(n)
			return out
		}
		return pdu.AppendText(out, pdu.KV{Key: kv.Key, Value: "Reject"})
	}
	if _, known := pdu.LookupKey(kv.Key); known {
		// Login-only and leading-only keys cannot be renegotiated.
		return pdu.AppendText(out, pdu.KV{Key: kv.Key, Value: "Reject"})
	}
	return pdu.AppendText(out, pdu.KV{Key: kv.Key, Value: "NotUnderstood"})
}

// textChunk sends as much of a text response as the initiator accepts in
// one PDU; more follows when it asks with the TTT.
func (s *session) textChunk(c *Conn, v *pdu.TextRequest, st *textState) {
	n := min(len(st.resp), c.maxSend)
	chunk := st.resp[:n]
	st.resp = st.resp[n:]
	resp := &pdu.TextResponse{LUN: v.LUN, ITT: v.ITT, TTT: pdu.ReservedTag, Final: true}
	if len(st.resp) > 0 {
		st.ttt = s.newTTT()
		resp.Final, resp.Continue, resp.TTT = false, true, st.ttt
	} else {
		delete(s.texts, v.ITT)
	}
	c.enqueue(resp, nil, chunk, false)
}
