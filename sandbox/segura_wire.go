package sandbox

import (
	"cmp"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
)

// reply is the outcome of one API call, before it becomes an envelope.
type reply struct {
	status     int
	message    string
	mensagem   string // Portuguese message; defaults to message
	tenant     string
	credential *seguraCredential
	sessions   *[]seguraRemoteSession
}

func success(msg string) reply             { return reply{status: http.StatusOK, message: msg} }
func failure(status int, msg string) reply { return reply{status: status, message: msg} }

type seguraEnvelope struct {
	Code       int                    `json:"code"`
	Response   seguraStatus           `json:"response"`
	Tenant     string                 `json:"tenant,omitempty"`
	Exception  *seguraException       `json:"exception,omitempty"`
	Credential *seguraCredential      `json:"credential,omitempty"`
	Sessions   *[]seguraRemoteSession `json:"remote_sessions,omitempty"`
}

// seguraRemoteSession is one entry of "List all remote sessions", field for field.
type seguraRemoteSession struct {
	ID           string  `json:"id"`
	User         string  `json:"user"`
	OriginIP     string  `json:"origin_ip"`
	Credential   string  `json:"credential"`
	Device       string  `json:"device"`
	Protocol     string  `json:"protocol"`
	Proxy        string  `json:"proxy"`
	SessionID    string  `json:"session_id"`
	Start        string  `json:"start"`
	End          string  `json:"end"`
	Time         string  `json:"time"`
	PreventPurge string  `json:"prevent_purge"`
	Request      *string `json:"request"`
	ITSM         *string `json:"ITSM"`
}

type seguraStatus struct {
	Status    int    `json:"status"`
	Message   string `json:"message"`
	Error     bool   `json:"error"`
	ErrorCode int    `json:"error_code"`
	Detail    string `json:"detail"`
	Mensagem  string `json:"mensagem"`
	Erro      bool   `json:"erro"`
	CodErro   int    `json:"cod_erro"`
}

type seguraException struct {
	Code    int     `json:"code"`
	Message string  `json:"message"`
	Detail  *string `json:"detail"`
}

type seguraCredential struct {
	ID       int    `json:"id"`
	Username string `json:"username"`
	Hostname string `json:"hostname"`
	Password string `json:"password"`
}

// writeSegura writes rep as the vendor's envelope. Errors carry error_code 1 as in the
// documented 1007 example; an "exception" object is added only when the message starts with a
// numeric vendor code ("1008: ..."), since the documentation shows none for the others.
func writeSegura(w http.ResponseWriter, rep reply) {
	env := seguraEnvelope{
		Code: rep.status,
		Response: seguraStatus{
			Status:   rep.status,
			Message:  rep.message,
			Mensagem: cmp.Or(rep.mensagem, rep.message),
		},
		Tenant:     rep.tenant,
		Credential: rep.credential,
		Sessions:   rep.sessions,
	}
	if rep.status != http.StatusOK {
		env.Response.Error, env.Response.Erro = true, true
		env.Response.ErrorCode, env.Response.CodErro = 1, 1
		if code, ok := vendorCode(rep.message); ok {
			env.Exception = &seguraException{Code: code, Message: rep.message}
		}
	}
	writeJSON(w, rep.status, env)
}

// vendorCode extracts 1007 from "1007: Credential not found".
func vendorCode(msg string) (int, bool) {
	num, _, found := strings.Cut(msg, ": ")
	if !found || num == "" || strings.Trim(num, "0123456789") != "" {
		return 0, false
	}
	code, err := strconv.Atoi(num)
	return code, err == nil
}

func writeFault(w http.ResponseWriter, f Fault) {
	if f.RetryAfter != "" {
		w.Header().Set("Retry-After", f.RetryAfter)
	}
	writeSegura(w, failure(f.Status, cmp.Or(f.Message, faultMessage(f.Status))))
}

func faultMessage(status int) string {
	switch status {
	case http.StatusInternalServerError:
		return msgUnexpected
	case http.StatusUnauthorized:
		return msgAuthFailed
	case http.StatusNotFound:
		return msgNotFound
	case http.StatusGatewayTimeout:
		return msgTimedOut
	}
	return cmp.Or(http.StatusText(status), msgUnexpected)
}

type oauthError struct {
	Error       string `json:"error"`
	Description string `json:"error_description,omitempty"`
}

type tokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int64  `json:"expires_in"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // the client hung up; nothing to do
}
