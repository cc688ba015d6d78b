package iscsitest

import (
	"bytes"
	"crypto/rand"
	"crypto/subtle"
	"slices"
	"strconv"

	"github.com/goiscsi/iscsi/pdu"
)

// maxChallenges bounds the challenges a session remembers to refuse their
// reflection.
const maxChallenges = 64

// chapResponse computes CHAP_R = H(CHAP_I || secret || CHAP_C) (RFC 1994),
// for an algorithm the target offered. The hash is pdu's, the initiator's
// own: the independent checks of CHAP are the real targets (tgtd, istgt and
// LIO in TestPeers and interop's TestLIOCHAP) and pdu's test vectors.
func chapResponse(alg int, id byte, secret string, challenge []byte) []byte {
	r, _ := pdu.CHAPResponse(alg, id, secret, challenge)
	return r
}

type chapStep uint8

const (
	chapNone  chapStep = iota
	chapWaitA          // AuthMethod=CHAP agreed, waiting for CHAP_A
	chapWaitR          // challenge sent, waiting for CHAP_N and CHAP_R
	chapDone
)

type chapState struct {
	step      chapStep
	alg       int
	id        byte
	challenge []byte
	// sent holds the challenges sent on this connection.
	sent [][]byte
}

// runCHAP runs one step of CHAP as the authenticator: keys are the CHAP_ keys
// of one request. It returns the status to fail the login with, or 0.
func (l *login) runCHAP(keys map[string]string, out *[]pdu.KV) pdu.LoginStatus {
	cfg := l.t.Config.CHAP
	st := &l.chap
	switch st.step {
	case chapWaitA:
		a, ok := keys["CHAP_A"]
		if !ok || len(keys) != 1 {
			return pdu.LoginAuthFailed
		}
		for _, v := range pdu.ParseList(a) {
			n, err := strconv.Atoi(v)
			if err == nil && slices.Contains(l.t.Config.CHAPAlgorithms, n) {
				st.alg = n
				break
			}
		}
		if st.alg == 0 {
			return pdu.LoginAuthFailed
		}
		var id [1]byte
		rand.Read(id[:])
		st.id = id[0]
		st.challenge = make([]byte, pdu.CHAPSize(st.alg))
		rand.Read(st.challenge)
		st.sent = append(st.sent, st.challenge)
		if l.sess != nil {
			l.sess.rememberChallenge(st.challenge)
		}
		*out = append(*out, pdu.KV{Key: "CHAP_A", Value: strconv.Itoa(st.alg)},
			pdu.KV{Key: "CHAP_I", Value: strconv.Itoa(int(st.id))},
			pdu.KV{Key: "CHAP_C", Value: pdu.FormatHex(st.challenge)})
		st.step = chapWaitR
		return 0
	case chapWaitR:
		name, okN := keys["CHAP_N"]
		r, okR := keys["CHAP_R"]
		mi, okI := keys["CHAP_I"]
		mc, okC := keys["CHAP_C"]
		if !okN || !okR || okI != okC || len(keys) != 2+2*btoi(okI) {
			return pdu.LoginAuthFailed
		}
		resp, err := pdu.ParseBinary(r, pdu.MaxBinaryValueLen)
		want := chapResponse(st.alg, st.id, cfg.Secret, st.challenge)
		if err != nil || name != cfg.User || subtle.ConstantTimeCompare(resp, want) != 1 {
			return pdu.LoginAuthFailed
		}
		mutual := cfg.MutualUser != ""
		if okI != mutual {
			// Like LIO: a target configured for mutual CHAP insists on it,
			// and one that is not cannot answer a challenge.
			return pdu.LoginAuthFailed
		}
		if mutual {
			id, err := pdu.ParseNumber(mi)
			if err != nil || id > 255 {
				return pdu.LoginAuthFailed
			}
			c, err := pdu.ParseBinary(mc, pdu.MaxBinaryValueLen)
			if err != nil || len(c) == 0 || l.reflected(c) {
				return pdu.LoginAuthFailed
			}
			*out = append(*out, pdu.KV{Key: "CHAP_N", Value: cfg.MutualUser},
				pdu.KV{Key: "CHAP_R", Value: pdu.FormatHex(chapResponse(st.alg, byte(id), cfg.MutualSecret, c))})
		}
		st.step = chapDone
		l.authDone = true
		return 0
	}
	return pdu.LoginAuthFailed
}

// reflected reports whether c is a challenge the target sent in this
// session: answering it would let an attacker use the target as an oracle.
func (l *login) reflected(c []byte) bool {
	for _, s := range l.chap.sent {
		if bytes.Equal(s, c) {
			return true
		}
	}
	if l.sess != nil {
		l.sess.mu.Lock()
		defer l.sess.mu.Unlock()
		for _, s := range l.sess.challenges {
			if bytes.Equal(s, c) {
				return true
			}
		}
	}
	return false
}

func (s *session) rememberChallenge(c []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.challenges = append(s.challenges, c)
	if len(s.challenges) > maxChallenges {
		s.challenges = s.challenges[1:]
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
