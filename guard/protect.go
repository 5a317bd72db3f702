// Package guard holds pamworker's guardrails: checks that refuse an event before any vendor is
// called because acting on it would be dangerous, however valid it is. This file protects named
// objects — break-glass accounts, the worker's own logins — from every action.
package guard

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"

	"github.com/pamworker/pamworker/events"
)

// CodeProtected is the rejection code of an event against a protected object.
const CodeProtected = "protected_object"

// Protected lists what no event may act on, per target.
type Protected struct {
	// Credentials of each Segura target: credential ids ("94") and username@hostname
	// patterns ("root@db01", "breakglass-*@*"; * matches any run of characters).
	Credentials map[string][]string
	// Users of each Element target whose sessions must not be deleted.
	ElementUsers map[string][]string
	// Users of each Segura target whose remote sessions must not be dropped. A drop event names
	// only the session, so its owner is looked up on the target (see SessionOwnerCheck).
	SessionOwners map[string][]string
}

// Check returns a protected_object rejection if ev acts on a protected object, else nil.
// Comparison is on skeletons (see skeleton), so a differently cased, padded or look-alike
// spelling of a protected name is refused too.
func (p Protected) Check(ev events.Event) *events.Rejection {
	var (
		list []string
		obj  string
	)
	switch ev.Action {
	case events.CredentialDisable, events.CredentialEnable, events.CustodyRelease:
		list = p.Credentials[ev.Target]
		if ev.CredentialID > 0 {
			obj = fmt.Sprint(ev.CredentialID)
		} else {
			obj = ev.Username + "@" + ev.Hostname
		}
	case events.ElementSessionsDelete:
		list, obj = p.ElementUsers[ev.Target], ev.Username
	default:
		return nil
	}
	if entry, ok := firstMatch(list, obj); ok {
		return &events.Rejection{Code: CodeProtected, Message: fmt.Sprintf(
			"%s is protected on %s target %q (matches %q); pamworker never acts on it", ev.Object(), vendorOf(ev.Action), ev.Target, entry)}
	}
	return nil
}

// SessionOwnerCheck returns the check a session drop on Segura target makes once it knows who
// opened the session: a protected_object rejection if that owner is protected, else nil. It
// returns nil when no owner is protected there, so no lookup is made.
func (p Protected) SessionOwnerCheck(target string) func(sessionID, owner string) *events.Rejection {
	list := p.SessionOwners[target]
	if len(list) == 0 {
		return nil
	}
	return func(sessionID, owner string) *events.Rejection {
		if entry, ok := firstMatch(list, owner); ok {
			return &events.Rejection{Code: CodeProtected, Message: fmt.Sprintf(
				"session %s was opened by %q, a protected session owner on segura target %q (matches %q); pamworker never drops it",
				sessionID, owner, target, entry)}
		}
		return nil
	}
}

// firstMatch returns the first entry of list whose skeleton matches obj's.
func firstMatch(list []string, obj string) (string, bool) {
	s := skeleton(obj)
	for _, entry := range list {
		if match(skeleton(entry), s) {
			return entry, true
		}
	}
	return "", false
}

func vendorOf(action string) string {
	if strings.HasPrefix(action, "element.") {
		return "element"
	}
	return "segura"
}

// skeleton reduces a name to what a person would read: surrounding space removed, Unicode
// compatibility forms folded (NFKC: full-width letters, ligatures), invisible characters
// (zero-width space, soft hyphen, bidi controls) dropped, case folded, letters that look like
// Latin ones (Cyrillic а, Greek ο ...) mapped to them, runs of spaces made one, the spaces
// around a distinguished name's separators dropped (CN=a, OU=b is CN=a,OU=b, as LDAP compares
// them) and trailing dots removed (db01. is the fully qualified db01). So "ＡＤＭＩＮ",
// " Admin ", "аdmin" and "ad\u200bmin" all read as "admin". Folding only ever makes more
// names match a protected entry, never fewer.
func skeleton(s string) string {
	s = norm.NFKC.String(s)
	var b strings.Builder
	space := false
	for _, r := range s {
		switch {
		case unicode.In(r, unicode.Cf, unicode.Zl, unicode.Zp):
			continue
		case unicode.IsSpace(r):
			space = true
			continue
		}
		r = unicode.ToLower(r)
		if l, ok := lookAlikes[r]; ok {
			r = l
		}
		if space && b.Len() > 0 && !strings.ContainsRune(",=+;", r) && !strings.ContainsRune(",=+;", lastRune(b.String())) {
			b.WriteByte(' ')
		}
		space = false
		b.WriteRune(r)
	}
	return strings.TrimRight(b.String(), ".")
}

func lastRune(s string) rune {
	r, _ := utf8.DecodeLastRuneInString(s)
	return r
}

// Skeleton is the folded form names are compared in (see skeleton): the protection lists use
// it, and so do the blast-radius limits for requested_by, so that "SOAR", " soar" and "ѕoar"
// (Cyrillic ѕ) count as one requester.
func Skeleton(s string) string { return skeleton(s) }

// lookAlikes maps lower-case Cyrillic and Greek letters that render like Latin letters.
var lookAlikes = map[rune]rune{
	'а': 'a', 'в': 'b', 'е': 'e', 'ё': 'e', 'к': 'k', 'м': 'm', 'н': 'h', 'о': 'o', 'р': 'p', 'с': 'c',
	'т': 't', 'у': 'y', 'х': 'x', 'і': 'i', 'ї': 'i', 'ј': 'j', 'ѕ': 's', 'ԁ': 'd', 'ԛ': 'q', 'ԝ': 'w',
	'α': 'a', 'β': 'b', 'ε': 'e', 'η': 'n', 'ι': 'i', 'κ': 'k', 'ν': 'v', 'ο': 'o', 'ρ': 'p', 'τ': 't',
	'υ': 'u', 'χ': 'x', 'ɑ': 'a', 'ı': 'i', 'ℓ': 'l',
}

// match reports whether s matches pattern, where * matches any run of characters.
func match(pattern, s string) bool {
	parts := strings.Split(pattern, "*")
	if len(parts) == 1 {
		return pattern == s
	}
	if !strings.HasPrefix(s, parts[0]) {
		return false
	}
	s = s[len(parts[0]):]
	for _, mid := range parts[1 : len(parts)-1] {
		i := strings.Index(s, mid)
		if i < 0 {
			return false
		}
		s = s[i+len(mid):]
	}
	return strings.HasSuffix(s, parts[len(parts)-1])
}
