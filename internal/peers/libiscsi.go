package peers

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// LibiscsiBin returns the path of libiscsi's command-line tool name, given
// with or without its "iscsi-" prefix ("perf" and "iscsi-perf" both name
// iscsi-perf).
func LibiscsiBin(name string) (string, error) {
	if !strings.HasPrefix(name, "iscsi-") {
		name = "iscsi-" + name
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("peers: %s not found (apt package %s): %w", name, AptPackage(name), err)
	}
	return p, nil
}

// LibiscsiURL returns the libiscsi URL of logical unit lun of target iqn at
// addr ("127.0.0.1:PORT"), with CHAP credentials when user is not empty. User and
// password must not contain "%", "@" or "/".
func LibiscsiURL(addr, iqn string, lun int, user, password string) string {
	cred := ""
	if user != "" {
		// libiscsi separates user and password with a percent sign and
		// does not unescape them.
		cred = user + "%" + password + "@"
	}
	return fmt.Sprintf("iscsi://%s%s/%s/%d", cred, addr, iqn, lun)
}

// RunLibiscsi runs libiscsi's tool name (see LibiscsiBin) with args, bounded
// by ctx and by timeout, and returns its combined output.
func RunLibiscsi(ctx context.Context, timeout time.Duration, name string, args ...string) (string, error) {
	bin, err := LibiscsiBin(name)
	if err != nil {
		return "", err
	}
	return runCmd(ctx, timeout, bin, args...)
}
