package main

import (
	"net"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
)

// iscsiURL is a target named as libiscsi names it:
// iscsi://[USER[%SECRET]@]HOST[:PORT][/TARGET-IQN[/LUN]].
type iscsiURL struct {
	user      string
	secret    string
	hasSecret bool
	// portal is host:port, with the port 3260 added when the URL has none.
	portal string
	target string
	// lun is -1 when the URL names none.
	lun int
}

// isISCSIURL reports whether s is meant as an iscsi:// URL.
func isISCSIURL(s string) bool { return strings.HasPrefix(strings.ToLower(s), "iscsi://") }

// parseISCSIURL parses an iscsi:// URL. libiscsi's syntax is not RFC 3986
// (the secret follows a '%', which is not an escape there, and an IQN holds
// ':'), so it is split by hand: the authority ends at the first '/', the
// user information at the authority's last '@'.
func parseISCSIURL(s string) (iscsiURL, error) {
	u := iscsiURL{lun: -1}
	if !isISCSIURL(s) {
		return u, invalidArgf("URL %q: want iscsi://[USER@]HOST[:PORT]/TARGET-IQN[/LUN]", s)
	}
	rest := s[len("iscsi://"):]
	if i := strings.IndexAny(rest, "?#"); i >= 0 {
		return u, invalidArgf("URL %q: iscsictl takes no query or fragment (%q); give options as flags", redactURL(s), rest[i:])
	}
	auth, path, _ := strings.Cut(rest, "/")
	if i := strings.LastIndexByte(auth, '@'); i >= 0 {
		ui := auth[:i]
		auth = auth[i+1:]
		u.user, u.secret, u.hasSecret = strings.Cut(ui, "%")
		if u.user == "" {
			return u, invalidArgf("URL %q: empty user name before '@'", redactURL(s))
		}
		if u.hasSecret && u.secret == "" {
			return u, invalidArgf("URL %q: empty secret after '%%'", redactURL(s))
		}
	}
	if auth == "" {
		return u, invalidArgf("URL %q: no host", redactURL(s))
	}
	p, err := normalizePortal(auth)
	if err != nil {
		return u, invalidArgf("URL %q: host %q: want HOST, HOST:PORT or [IPV6]:PORT", redactURL(s), auth)
	}
	if _, port, _ := net.SplitHostPort(p); port != "" {
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return u, invalidArgf("URL %q: port %q: want 1 to 65535", redactURL(s), port)
		}
	}
	u.portal = p
	target, lun, hasLUN := strings.Cut(path, "/")
	u.target = target
	if hasLUN {
		lun = strings.TrimSuffix(lun, "/")
		n, err := strconv.ParseUint(lun, 10, 16)
		if err != nil || strings.Contains(lun, "/") {
			return u, invalidArgf("URL %q: LUN %q: want a number from 0 to 65535", redactURL(s), lun)
		}
		if target == "" {
			return u, invalidArgf("URL %q: a LUN without a target", redactURL(s))
		}
		u.lun = int(n)
	}
	return u, nil
}

// redactURL hides the secret of an iscsi:// URL, for messages.
func redactURL(s string) string {
	rest := s[min(len(s), len("iscsi://")):]
	auth, _, _ := strings.Cut(rest, "/")
	at := strings.LastIndexByte(auth, '@')
	if at < 0 {
		return s
	}
	if pct := strings.IndexByte(auth[:at], '%'); pct >= 0 {
		return s[:len("iscsi://")+pct] + "%REDACTED" + s[len("iscsi://")+at:]
	}
	return s
}

// fromURL takes the target from an iscsi:// URL: the positional argument,
// or --portal's value when it is one. Giving the target both ways is an
// error; a secret in the URL is one unless --allow-secret-in-url.
func (t *targetFlags) fromURL(a *app, pos []string, want targetWant) error {
	raw, from := "", ""
	switch {
	case len(pos) > 0 && isISCSIURL(t.portal):
		return invalidArgf("two URLs: %s and --portal %s; give one", redactURL(pos[0]), redactURL(t.portal))
	case len(pos) > 0:
		raw, from = pos[0], "the URL"
		if t.portal != "" {
			return invalidArgf("the portal is given twice: in the URL and with --portal; give one")
		}
	case isISCSIURL(t.portal):
		raw, from = t.portal, "--portal's URL"
	default:
		return nil
	}
	u, err := parseISCSIURL(raw)
	if err != nil {
		return err
	}
	if u.hasSecret && !t.allowSecretInURL {
		return invalidArgf("%s has a CHAP secret, which the process list and the shell's history would show: put it in a file named by --chap-secret-file or in $%s (or add --allow-secret-in-url)", from, envCHAPSecret)
	}
	t.portal = u.portal
	if u.target != "" {
		if want == targetNone {
			return invalidArgf("%s names a target, which %s does not take: give iscsi://HOST[:PORT]", from, a.name)
		}
		if t.target != "" && t.target != u.target {
			return invalidArgf("the target is given twice: %s in %s and %s with --target; give one", u.target, from, t.target)
		}
		t.target = u.target
	}
	if u.user != "" {
		if t.chapUser != "" && t.chapUser != u.user {
			return invalidArgf("the CHAP user is given twice: %s in %s and %s with --chap-user; give one", u.user, from, t.chapUser)
		}
		t.chapUser = u.user
	}
	if u.hasSecret {
		t.urlSecret = u.secret
	}
	t.urlLUN = u.lun
	return nil
}

// lunFrom sets *lun, the command's --lun, from the URL's LUN; both given
// and different is an error.
func (t *targetFlags) lunFrom(lun *int) error {
	if t.urlLUN < 0 {
		return nil
	}
	if t.fs != nil && t.fs.Changed("lun") && *lun != t.urlLUN {
		return invalidArgf("the LUN is given twice: %d in the URL and %d with --lun; give one", t.urlLUN, *lun)
	}
	*lun = t.urlLUN
	return nil
}

// digestMode is what --header-digest and --data-digest ask for.
type digestMode int

const (
	digestNone     digestMode = iota // offer None only
	digestOffer                      // offer CRC32C, accept None
	digestRequired                   // offer CRC32C; a session without it is an error
)

func (d *digestMode) String() string {
	switch *d {
	case digestOffer:
		return "offer"
	case digestRequired:
		return "required"
	}
	return "none"
}

func (d *digestMode) Set(v string) error {
	switch strings.ToLower(v) {
	case "none", "off", "false":
		*d = digestNone
	case "offer", "on", "true", "crc32c":
		*d = digestOffer
	case "required", "require":
		*d = digestRequired
	default:
		return invalidArgf("%q: want none, offer or required", v)
	}
	return nil
}

func (d *digestMode) Type() string { return "none|offer|required" }

// digestFlag registers a digest flag: alone it offers CRC32C (as the
// boolean flag it was), =required makes a session without it an error.
func digestFlag(fs *pflag.FlagSet, d *digestMode, name, what string) {
	fs.Var(d, name, "CRC32C "+what+" digests: none, offer (the flag alone) or required (--"+name+"=required: a target that will not use them is an error)")
	fs.Lookup(name).NoOptDefVal = "offer"
}
