package reliability

import (
	"testing"

	"go.uber.org/goleak"
)

// Every test ends with no goroutine of the initiator or of a target left.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
