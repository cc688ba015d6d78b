// Package interop tests the library against real targets that run in their
// own kernels: LIO, the Linux kernel target, in a throwaway qemu VM (see
// internal/peers.StartLIO and scripts/lio-vm). Without qemu the tests skip,
// or fail when CI=true. README.md says what each test covers.
package interop

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
