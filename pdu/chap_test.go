package pdu_test

import (
	"encoding/hex"
	"testing"

	"github.com/goiscsi/iscsi/pdu"
)

// CHAPResponse against H(id || secret || challenge) computed independently
// (Python's hashlib), for every algorithm, and its sizes.
func TestCHAPResponse(t *testing.T) {
	challenge := make([]byte, 16)
	for i := range challenge {
		challenge[i] = byte(i)
	}
	for _, tc := range []struct {
		alg  int
		want string
	}{
		{pdu.CHAPMD5, "5d7ff98a86a22f240c1d28d0269df558"},
		{pdu.CHAPSHA1, "b72db6da05d609a5758d25bfa85cea9b7d9208ea"},
		{pdu.CHAPSHA256, "5a0541be80f5096404f9dccf5340d5357b400b1e380b56b4a4840d830374551c"},
		{pdu.CHAPSHA3256, "ab6964dd07b6ced102e7bebc674075e69f21c4697b049ff1d66d8397a91604db"},
	} {
		got, ok := pdu.CHAPResponse(tc.alg, 0x2a, "twelve-byte-secret", challenge)
		if !ok || hex.EncodeToString(got) != tc.want || pdu.CHAPSize(tc.alg) != len(got) {
			t.Errorf("CHAP_A %d: %x (ok %v, size %d), want %s", tc.alg, got, ok, pdu.CHAPSize(tc.alg), tc.want)
		}
	}
	if _, ok := pdu.CHAPResponse(9, 1, "x", nil); ok || pdu.CHAPSize(9) != 0 {
		t.Error("CHAP_A 9 computed")
	}
}
