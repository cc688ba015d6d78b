package capture

import "testing"

// TestDetectShapes: the BHS shapes DetectPorts recognises, and near misses
// it does not.
func TestDetectShapes(t *testing.T) {
	login := make([]byte, 48)
	login[0], login[1] = 0x43, 0x81 // Login Request, T, CSG 0 NSG 1
	text := []byte("InitiatorName=iqn.2026-01.org.goiscsi:x\x00")
	login[7] = byte(len(text))
	login = append(login, text...)
	if !isLoginRequest(login) {
		t.Error("a Login Request not recognised")
	}
	noName := append([]byte{}, login...)
	copy(noName[48:], "TargetName=")
	if isLoginRequest(noName) {
		t.Error("a Login Request without InitiatorName= recognised")
	}
	v1 := append([]byte{}, login...)
	v1[2] = 1
	if isLoginRequest(v1) {
		t.Error("Version-max 1 recognised")
	}
	resp := make([]byte, 48)
	resp[0], resp[1] = 0x23, 0x87
	if !isLoginResponse(resp) {
		t.Error("a Login Response not recognised")
	}
	cmd := make([]byte, 48+8)
	cmd[0], cmd[1], cmd[7] = 0x01, 0xa0, 5 // F, W; 5 bytes of data, padded to 8
	if !isWholeSCSICommand(cmd) || !isWholeSCSICommand(append(cmd, 0, 0, 0, 0)) {
		t.Error("a SCSI Command not recognised")
	}
	if isWholeSCSICommand(cmd[:50]) || isWholeSCSICommand(append(cmd, 1)) {
		t.Error("a SCSI Command of the wrong length recognised")
	}
}
