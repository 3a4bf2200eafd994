package nmi

import (
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// A request waiting for a Secret watch to sync must not be stranded when Retain stops that watch
// meanwhile (its identity was deleted and re-created, say): it starts a new watch and keeps
// waiting on that one. The apiserver here refuses everything, so no watch ever syncs.
func TestSecretRequestStartsANewWatchWhenItsWatchIsStopped(t *testing.T) {
	refuse := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Forbidden","code":403}`, http.StatusForbidden)
	}))
	defer refuse.Close()
	kc, err := kubernetes.NewForConfig(&rest.Config{Host: refuse.URL})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := NewSecretWatcher(ctx, kc)

	reqCtx, endRequest := context.WithTimeout(ctx, 30*time.Second)
	defer endRequest()
	done := make(chan error, 1)
	go func() {
		_, err := w.GetSecret(reqCtx, "ns", "creds")
		done <- err
	}()
	current := func() *secretWatch {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.watches["ns/creds"]
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !ok(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s never happened; watching %v", what, w.Watching())
			}
		}
	}
	waitFor("the first watch", func() bool { return current() != nil })
	first := current()

	w.Retain(nil)
	waitFor("a new watch after Retain stopped the first", func() bool { c := current(); return c != nil && c != first })
	if got := w.Watching(); !slices.Equal(got, []string{"ns/creds"}) {
		t.Fatalf("watching %v, want [ns/creds]", got)
	}

	endRequest()
	if err := <-done; err == nil {
		t.Fatal("GetSecret succeeded against an apiserver that refuses everything")
	}
}
