package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestStart(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	env, err := Start(t.Context(), slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Close() })

	// Segura: a token with the generated credentials, then an action.
	resp, err := http.PostForm(env.SeguraURL+SeguraTokenPath, url.Values{
		"grant_type": {"client_credentials"}, "client_id": {env.SeguraClientID}, "client_secret": {env.SeguraClientSecret},
	})
	if err != nil {
		t.Fatal(err)
	}
	var tok tokenResponse
	_ = json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()
	req, _ := http.NewRequest("DELETE", env.SeguraURL+"/api/pam/credential/7", nil)
	req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
	if resp, err = http.DefaultClient.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("Segura disable: %v %v", err, resp)
	}
	resp.Body.Close()
	if active, _, _ := env.Segura.Credential(7); active {
		t.Error("env.Segura is not the served simulator")
	}

	// Element: the advertised endpoint and credentials work as is.
	req, _ = http.NewRequest("POST", env.ElementURL, strings.NewReader(`{"method":"DeleteAuthSessionsByUsername","params":{"username":"operator"},"id":1}`))
	req.Header.Set("Content-Type", "application/json-rpc")
	req.SetBasicAuth(env.ElementUsername, env.ElementPassword)
	if resp, err = http.DefaultClient.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("Element delete: %v %v", err, resp)
	}
	resp.Body.Close()
	if env.Element.Sessions("operator") != 0 {
		t.Error("env.Element is not the served simulator")
	}

	out := logs.String()
	for _, want := range []string{env.SeguraURL, env.ElementURL} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %s:\n%s", want, out)
		}
	}
	for _, secret := range []string{env.SeguraClientSecret, env.ElementPassword} {
		if secret == "" || strings.Contains(out, secret) {
			t.Errorf("secret empty or logged:\n%s", out)
		}
	}

	if err := env.Close(); err != nil {
		t.Fatal(err)
	}
	_ = env.Close() // idempotent
	if _, err := http.Get(env.SeguraURL + "/api/pam/credential/1"); err == nil {
		t.Error("Segura still serving after Close")
	}
}

func TestStartStopsWithContext(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	env, err := Start(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		resp, err := http.Get(env.ElementURL)
		if err != nil {
			break
		}
		resp.Body.Close()
		if time.Now().After(deadline) {
			t.Fatal("Element still serving after the context ended")
		}
	}
}
