package testutil

import (
	"bytes"
	"testing"
)

func TestRW16(t *testing.T) {
	got := RW16(0x8a, 0x0102030405060708, 3*512, 512)
	want := []byte{0x8a, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 3, 0, 0}
	if !bytes.Equal(got, want) {
		t.Errorf("RW16: % x, want % x", got, want)
	}
}

func TestFirstDiff(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{{"", "", -1}, {"abc", "abc", -1}, {"abc", "abd", 2}, {"ab", "abc", 2}, {"xbc", "abc", 0}} {
		if got := FirstDiff([]byte(tc.a), []byte(tc.b)); got != tc.want {
			t.Errorf("FirstDiff(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}
