package pdu

import (
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha3"
	"hash"
)

// CHAP algorithms: the CHAP_A values RFC 7143 §12.1.3 names (MD5) and the
// IANA PPP authentication algorithm registry adds (SHA-1, SHA-256,
// SHA3-256), which LIO and open-iscsi offer.
const (
	CHAPMD5     = 5
	CHAPSHA1    = 6
	CHAPSHA256  = 7
	CHAPSHA3256 = 8
)

// CHAPResponse computes CHAP_R = H(CHAP_I || secret || CHAP_C) (RFC 1994
// §4.1) with the hash of algorithm alg; ok is false for an algorithm not
// listed above.
func CHAPResponse(alg int, id byte, secret string, challenge []byte) (resp []byte, ok bool) {
	var h hash.Hash
	switch alg {
	case CHAPMD5:
		h = md5.New()
	case CHAPSHA1:
		h = sha1.New()
	case CHAPSHA256:
		h = sha256.New()
	case CHAPSHA3256:
		h = sha3.New256()
	default:
		return nil, false
	}
	h.Write([]byte{id})
	h.Write([]byte(secret))
	h.Write(challenge)
	return h.Sum(nil), true
}

// CHAPSize returns the size in bytes of algorithm alg's responses, 0 for an
// algorithm CHAPResponse does not compute.
func CHAPSize(alg int) int {
	switch alg {
	case CHAPMD5:
		return md5.Size
	case CHAPSHA1:
		return sha1.Size
	case CHAPSHA256:
		return sha256.Size
	case CHAPSHA3256:
		return 32
	}
	return 0
}
