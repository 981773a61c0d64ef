package kubeclient

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestTokenSourceRereadsTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Unix(1000, 0)
	ts := &tokenSource{path: path, maxAge: time.Minute, now: func() time.Time { return now }}
	if _, err := ts.get(); err == nil {
		t.Fatal("no file and no token yet: no error")
	}
	write("one\n")
	get := func(want string) {
		t.Helper()
		if got, err := ts.get(); err != nil || got != want {
			t.Fatalf("token %q %v, want %q", got, err, want)
		}
	}
	get("one")
	write("two")
	now = now.Add(59 * time.Second)
	get("one") // still fresh
	now = now.Add(2 * time.Second)
	get("two") // a minute old: read again
	write("three")
	ts.invalidate() // the server refused it
	get("three")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	now = now.Add(time.Hour)
	get("three") // the file is briefly gone while the kubelet swaps it
	write("   ")
	ts.invalidate()
	get("three") // an empty file is not a token
}
