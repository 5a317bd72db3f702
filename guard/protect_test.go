package guard

import (
	"strings"
	"testing"
	"time"

	"github.com/pamworker/pamworker/events"
)

func TestProtected(t *testing.T) {
	t.Parallel()
	p := Protected{
		Credentials:  map[string][]string{"default": {"94", "root@db01", "breakglass-*@*"}},
		ElementUsers: map[string][]string{"default": {"admin", "CN=Jane Doe,OU=Ops,DC=example,DC=com"}},
	}
	cred := func(id int64, user, host string) events.Event {
		return events.Event{Action: events.CredentialDisable, Target: "default", CredentialID: id, Username: user, Hostname: host}
	}
	elem := func(user string) events.Event {
		return events.Event{Action: events.ElementSessionsDelete, Target: "default", Username: user}
	}
	for _, tc := range []struct {
		name      string
		ev        events.Event
		protected bool
	}{
		{"id", cred(94, "", ""), true},
		{"other id", cred(95, "", ""), false},
		{"id on another target", events.Event{Action: events.CredentialEnable, Target: "branch", CredentialID: 94}, false},
		{"name", cred(0, "root", "db01"), true},
		{"name in capitals", cred(0, "ROOT", "DB01"), true},
		{"name with spaces", cred(0, " root", "db01 "), true},
		{"name with a Cyrillic о", cred(0, "rоot", "db01"), true},
		{"full-width name", cred(0, "ｒｏｏｔ", "ｄｂ０１"), true},
		{"pattern", cred(0, "breakglass-7", "anyhost"), true},
		{"near the pattern", cred(0, "breakglass7", "anyhost"), false},
		{"custody release is guarded too", events.Event{Action: events.CustodyRelease, Target: "default", CredentialID: 94}, true},
		{"element user", elem("admin"), true},
		{"element user, look-alike", elem("аdmіn"), true},
		{"element LDAP DN in another case", elem("cn=jane doe,ou=ops,dc=example,dc=com"), true},
		{"other element user", elem("operator"), false},
		{"hostname with a trailing dot", cred(0, "root", "db01."), true},
		{"zero-width space", cred(0, "ro\u200bot", "db01"), true},
		{"soft hyphen", elem("ad\u00admin"), true},
		{"bidi mark", elem("\u200eadmin"), true},
		{"DN with spaces after commas", elem("CN=Jane Doe, OU=Ops, DC=example, DC=com"), true},
		{"DN with spaces around =", elem("CN = Jane Doe,OU = Ops,DC=example,DC=com"), true},
		{"DN with a doubled inner space", elem("CN=Jane  Doe,OU=Ops,DC=example,DC=com"), true},
		{"DN with a tab", elem("CN=Jane\tDoe,OU=Ops,DC=example,DC=com"), true},
		{"DN of another person", elem("CN=Jane Doe2,OU=Ops,DC=example,DC=com"), false},
		{"name that only shares a prefix", elem("admins"), false},
		{"session drop is not guarded here", events.Event{Action: events.SessionDrop, Target: "default", SessionID: "admin"}, false},
	} {
		rej := p.Check(tc.ev)
		if got := rej != nil; got != tc.protected {
			t.Errorf("%s: protected = %v (%v), want %v", tc.name, got, rej, tc.protected)
		}
		if rej != nil && rej.Code != CodeProtected {
			t.Errorf("%s: code %q", tc.name, rej.Code)
		}
	}
}

func TestSessionOwnerCheck(t *testing.T) {
	t.Parallel()
	p := Protected{SessionOwners: map[string][]string{"default": {"breakglass", "svc-*"}}}
	if p.SessionOwnerCheck("branch") != nil {
		t.Fatal("a target with no protected owner needs no lookup, so its check must be nil")
	}
	check := p.SessionOwnerCheck("default")
	for _, tc := range []struct {
		owner     string
		protected bool
	}{
		{"breakglass", true}, {" BreakGlass ", true}, {"breаkglass", true}, {"ｂｒｅａｋｇｌａｓｓ", true},
		{"svc-backup", true}, {"alice", false}, {"breakglass2", false}, {"", false},
	} {
		rej := check("e95d6160", tc.owner)
		if got := rej != nil; got != tc.protected {
			t.Errorf("owner %q: protected = %v (%v), want %v", tc.owner, got, rej, tc.protected)
		}
		if rej != nil && (rej.Code != CodeProtected || !strings.Contains(rej.Message, "e95d6160")) {
			t.Errorf("owner %q: %+v", tc.owner, rej)
		}
	}
}

func TestMatch(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		pattern, s string
		want       bool
	}{
		{"a", "a", true}, {"a", "ab", false}, {"a*", "abc", true}, {"*c", "abc", true}, {"a*c", "abc", true},
		{"a*c", "ac", true}, {"a*b*c", "axbyc", true}, {"a*b*c", "axcyb", false}, {"*", "", true}, {"*@db*", "root@db01", true},
	} {
		if got := match(tc.pattern, tc.s); got != tc.want {
			t.Errorf("match(%q, %q) = %v", tc.pattern, tc.s, got)
		}
	}
}

func TestParseLimits(t *testing.T) {
	t.Parallel()
	l, err := ParseLimits(" pam.credential.disable=200/1m/50 , pam.session.drop=200/30s")
	if err != nil || l["pam.credential.disable"] != (Limit{Max: 200, Window: time.Minute, PerRequester: 50}) ||
		l["pam.session.drop"] != (Limit{Max: 200, Window: 30 * time.Second}) {
		t.Fatalf("%v %v", l, err)
	}
	for _, bad := range []string{"pam.credential.disable=50", "pam.credential.disable=0/1m", "pam.nope=5/1m", "pam.session.drop=5/soon", "x",
		"pam.session.drop=5/1m/6", "pam.session.drop=5/1m/0", "pam.session.drop=5/1m/x", "pam.session.drop=5/1m/1/1", "pam.session.drop=20000/1m"} {
		if _, err := ParseLimits(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	if l, err := ParseLimits(""); err != nil || len(l) != 0 {
		t.Errorf("empty: %v %v", l, err)
	}
}

// TestRequester: the names one publisher can give itself count as one requester.
func TestRequester(t *testing.T) {
	t.Parallel()
	want := Requester(events.Event{RequestedBy: "soar"})
	for _, name := range []string{"SOAR", "Soar", " soar ", "ѕoar", "so\u200bar", "ｓｏａｒ", "so\u00adar", "soar."} {
		if got := Requester(events.Event{RequestedBy: name}); got != want {
			t.Errorf("%q counts as %q, not as soar", name, got)
		}
	}
	if Requester(events.Event{RequestedBy: "soar-2"}) == want {
		t.Error("another requester counts as soar")
	}
}
