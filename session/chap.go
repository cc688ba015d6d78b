package session

import (
	"bytes"
	"crypto/rand"
	"crypto/subtle"
	"strconv"

	"github.com/goiscsi/iscsi/pdu"
)

// CHAP algorithms (CHAP_A values): pdu's, named here for Config users.
const (
	CHAPMD5     = pdu.CHAPMD5
	CHAPSHA1    = pdu.CHAPSHA1
	CHAPSHA256  = pdu.CHAPSHA256
	CHAPSHA3256 = pdu.CHAPSHA3256
)

// CHAP configures CHAP authentication. Secrets are never logged nor put in
// errors.
type CHAP struct {
	User   string
	Secret string
	// TargetUser and TargetSecret, when TargetSecret is set, make the
	// authentication mutual: the target must prove it knows TargetSecret.
	// TargetUser, if set, is the name the target must give.
	TargetUser   string
	TargetSecret string
	// Algorithms are offered in order of preference; empty means
	// SHA3-256, SHA-256, SHA-1, MD5.
	Algorithms []int
	// AllowShortSecrets permits secrets under 12 bytes (RFC 7143 allows
	// them only under IPsec).
	AllowShortSecrets bool
}

func (c *CHAP) algorithms() []int {
	if len(c.Algorithms) > 0 {
		return c.Algorithms
	}
	return []int{CHAPSHA3256, CHAPSHA256, CHAPSHA1, CHAPMD5}
}

func (c *CHAP) check() error {
	if c.Secret == "" {
		return &NegotiationError{Key: "CHAP", Reason: "no secret configured"}
	}
	if !c.AllowShortSecrets && (len(c.Secret) < 12 || (c.TargetSecret != "" && len(c.TargetSecret) < 12)) {
		return ErrShortSecret
	}
	for _, a := range c.Algorithms {
		if pdu.CHAPSize(a) == 0 {
			return &NegotiationError{Key: "CHAP_A", Reason: "unknown algorithm " + strconv.Itoa(a)}
		}
	}
	// Equal secrets would let a target answer our challenge with our own
	// response (RFC 7143 §12.1.3); short secrets do not change that.
	if c.TargetSecret != "" && c.TargetSecret == c.Secret {
		return &NegotiationError{Key: "CHAP", Reason: "initiator and target secrets must differ"}
	}
	return nil
}

// chapResponse computes H(id || secret || challenge), RFC 1994 §4.1, for
// an algorithm check or offer has let through.
func chapResponse(alg int, id byte, secret string, challenge []byte) []byte {
	r, _ := pdu.CHAPResponse(alg, id, secret, challenge)
	return r
}

// chapState is the initiator's side of one CHAP exchange.
type chapState struct {
	cfg *CHAP
	alg int
	// sent are the challenges this session has sent, to refuse a target
	// that reflects one back.
	sent *[][]byte
	// avoid is an algorithm left out of the offer (see Session.connect).
	avoid int
	// ourID and ourChallenge are the mutual challenge we sent.
	ourID        byte
	ourChallenge []byte
}

// offered returns the algorithms this exchange offers.
func (c *chapState) offered() []int {
	var out []int
	for _, a := range c.cfg.algorithms() {
		if a != c.avoid {
			out = append(out, a)
		}
	}
	return out
}

func (c *chapState) offer() string {
	s := ""
	for i, a := range c.offered() {
		if i > 0 {
			s += ","
		}
		s += strconv.Itoa(a)
	}
	return s
}

// answer validates the target's CHAP_A, CHAP_I, CHAP_C and returns the keys
// to send: CHAP_N, CHAP_R and, for mutual CHAP, CHAP_I and CHAP_C.
func (c *chapState) answer(a, i, ch string) ([]kvPair, error) {
	alg, err := strconv.Atoi(a)
	offered := false
	for _, x := range c.offered() {
		offered = offered || x == alg
	}
	c.alg = alg
	if err != nil || !offered || pdu.CHAPSize(alg) == 0 {
		c.alg = 0
		return nil, &NegotiationError{Key: "CHAP_A", Reason: "target chose an algorithm we did not offer: " + strconv.Quote(a)}
	}
	id, err := strconv.Atoi(i)
	if err != nil {
		if n, perr := parseNum(i); perr == nil {
			id, err = int(n), nil
		}
	}
	if err != nil || id < 0 || id > 255 {
		return nil, &NegotiationError{Key: "CHAP_I", Reason: "identifier not in 0-255"}
	}
	challenge, err := parseBinary(ch, 1024)
	if err != nil || len(challenge) == 0 {
		return nil, &NegotiationError{Key: "CHAP_C", Reason: "malformed challenge"}
	}
	for _, s := range *c.sent {
		if bytes.Equal(s, challenge) {
			return nil, &NegotiationError{Key: "CHAP_C", Reason: "target sent back a challenge of ours (reflection)"}
		}
	}
	resp := chapResponse(alg, byte(id), c.cfg.Secret, challenge)
	out := []kvPair{kv("CHAP_N", c.cfg.User), kv("CHAP_R", hexValue(resp))}
	if c.cfg.TargetSecret != "" {
		var b [1]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, err
		}
		c.ourID = b[0]
		c.ourChallenge = make([]byte, max(16, pdu.CHAPSize(alg)))
		if _, err := rand.Read(c.ourChallenge); err != nil {
			return nil, err
		}
		if bytes.Equal(c.ourChallenge, challenge) {
			return nil, &NegotiationError{Key: "CHAP_C", Reason: "challenge collision"}
		}
		*c.sent = append(*c.sent, c.ourChallenge)
		out = append(out, kv("CHAP_I", strconv.Itoa(int(c.ourID))), kv("CHAP_C", hexValue(c.ourChallenge)))
	}
	return out, nil
}

// verify checks the target's answer to our mutual challenge.
func (c *chapState) verify(n, r string, ok bool) error {
	if !ok {
		return &NegotiationError{Key: "CHAP_R", Reason: "target did not answer our challenge (mutual CHAP)"}
	}
	if c.cfg.TargetUser != "" && n != c.cfg.TargetUser {
		return &NegotiationError{Key: "CHAP_N", Reason: "target gave an unexpected name"}
	}
	got, err := parseBinary(r, 1024)
	if err != nil {
		return &NegotiationError{Key: "CHAP_R", Reason: "malformed response"}
	}
	want := chapResponse(c.alg, c.ourID, c.cfg.TargetSecret, c.ourChallenge)
	if subtle.ConstantTimeCompare(got, want) != 1 {
		return &NegotiationError{Key: "CHAP_R", Reason: "target failed mutual authentication"}
	}
	return nil
}
