package session

import (
	"sync"

	"github.com/goiscsi/iscsi/pdu"
)

type taskKind uint8

const (
	taskSCSI taskKind = iota
	taskNOP
	taskTMF
	taskLogout
	taskText
)

// task is one exchange waiting for the target: a SCSI command, a NOP-Out,
// a task management request, a logout or a text request.
type task struct {
	itt  uint32
	kind taskKind
	done chan struct{}
	once sync.Once
	err  error

	// SCSI command state. mu is held while the reader copies Data-In into
	// readBuf, so that a caller giving up can wait for the copy to end.
	mu   sync.Mutex
	dead bool
	// cmdSN is the command's CmdSN once sent is set, for ABORT TASK.
	cmdSN    uint32
	sent     bool
	lun      pdu.LUN
	readBuf  []byte
	writeLen int
	received int
	dataSN   uint32
	r2ts     chan pdu.R2T
	status   uint8
	response uint8
	sense    []byte
	residual uint32
	under    bool
	over     bool

	tmfResp      uint8
	logoutReason uint8
	logoutResp   pdu.LogoutResponse
	textResp     pdu.TextResponse
	text         []byte
}

// complete ends the task once: set records its result, err its failure.
// Whatever set writes is visible to the waiter after done is closed.
func (t *task) complete(err error, set func()) {
	t.once.Do(func() {
		if set != nil {
			set()
		}
		t.err = err
		close(t.done)
	})
}

// scsiResponse completes a command from a SCSI Response.
func (t *task) scsiResponse(r *pdu.SCSIResponse, data []byte) {
	var sense []byte
	if len(data) >= 2 {
		n := int(data[0])<<8 | int(data[1])
		if n > len(data)-2 {
			n = len(data) - 2
		}
		sense = append([]byte(nil), data[2:2+n]...)
	}
	t.complete(nil, func() {
		t.response, t.status, t.sense = r.Response, r.Status, sense
		t.residual, t.under, t.over = r.ResidualCount, r.Underflow, r.Overflow
	})
}
