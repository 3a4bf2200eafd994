package nmi

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
)

// Several tokens (auxiliary tenants) render as a JSON array, primary first, numbers as strings.
func TestRenderArray(t *testing.T) {
	exp := time.Now().Add(time.Hour)
	e := newEntry([]Token{
		{AccessToken: "a", ExpiresOn: exp, NotBefore: time.Now(), Resource: "r", TokenType: "Bearer", ClientID: "c"},
		{AccessToken: "b", ExpiresOn: exp, NotBefore: time.Now(), Resource: "r", TokenType: "Bearer", ClientID: "c"},
	}, nil)
	var arr []map[string]any
	if err := json.Unmarshal(e.appendBody(nil, time.Now()), &arr); err != nil {
		t.Fatal(err)
	}
	if len(arr) != 2 || arr[0]["access_token"] != "a" || arr[1]["access_token"] != "b" {
		t.Fatalf("got %v", arr)
	}
	for _, k := range []string{"expires_in", "expires_on", "not_before", "client_id", "resource", "token_type"} {
		if _, ok := arr[0][k].(string); !ok {
			t.Errorf("%s is %T, want string", k, arr[0][k])
		}
	}
}

func TestStatusTable(t *testing.T) {
	cases := []struct {
		err   error
		retry bool
		want  int
	}{
		{ErrNoMetadataHeader, false, 400},
		{&PodNotFoundError{IP: "1.2.3.4"}, false, 404},
		{&AmbiguousPodError{IP: "1.2.3.4"}, false, 503},
		{ErrNotBound, false, 403},
		{ErrNotAssigned, false, 404},
		{ErrNotAssigned, true, 503},
		{ErrIdentityNotFound, false, 404},
		{&rateLimitError{pod: "a/b", wait: time.Second}, false, 429},
		{ErrCredential, false, 403},
		{&UpstreamError{Service: "imds", Status: 500}, false, 503},
		{&UpstreamError{Service: "imds", Status: 429}, false, 429},
		{&UpstreamError{Service: "aad", Status: 401}, false, 403},
		{&UpstreamError{Service: "aad", Status: 0}, false, 503},
		{ErrUnavailable, false, 503},
		{errors.New("other"), false, 503},
	}
	for _, c := range cases {
		if got := statusOf(c.err, c.retry, 20*time.Second).status; got != c.want {
			t.Errorf("%v (retry-after mode %v): %d, want %d", c.err, c.retry, got, c.want)
		}
	}
	if ra := statusOf(ErrNotAssigned, true, 20*time.Second).retryAfter; ra != 20*time.Second {
		t.Errorf("Retry-After %s", ra)
	}
}

func TestDetectKubenet(t *testing.T) {
	cases := []struct {
		f    NetworkFacts
		want bool
	}{
		{NetworkFacts{KubeletArgs: `KUBELET_FLAGS="--network-plugin=kubenet --max-pods=110"`}, true},
		{NetworkFacts{KubeletArgs: `KUBELET_FLAGS=--network-plugin=cni`}, false},
		{NetworkFacts{KubeletArgs: `--network-plugin=cni`, CNIConfigs: map[string][]byte{
			"10-calico.conflist": []byte(`{"name":"k8s-pod-network","plugins":[{"type":"calico","ipam":{"type":"host-local","subnet":"usePodCidr"}}]}`)}}, true},
		{NetworkFacts{CNIConfigs: map[string][]byte{"10-bridge.conf": []byte(`{"name":"kubenet","type":"bridge","bridge":"cbr0"}`)}}, true},
		{NetworkFacts{CNIConfigs: map[string][]byte{"10-azure.conflist": []byte(`{"name":"azure","plugins":[{"type":"azure-vnet","ipam":{"type":"azure-vnet-ipam"}}]}`)}}, false},
		{NetworkFacts{CNIConfigs: map[string][]byte{"junk": []byte(`not json`)}}, false},
	}
	for i, c := range cases {
		if got, why := DetectKubenet(c.f); got != c.want {
			t.Errorf("case %d: %v (%s), want %v", i, got, why, c.want)
		}
	}
}

// Exceptions go through internal/binding's rule: only the pod's namespace counts, any one label
// with a case-insensitively equal value matches, and updates and deletes take effect.
func TestStoreExceptions(t *testing.T) {
	s := NewStore()
	pod := &podInfo{Namespace: "apps", Name: "p", Labels: map[string]string{"app": "agent", "tier": "x"}}
	exc := func(ns, name string, labels map[string]string) *aadv1.AzurePodIdentityException {
		return &aadv1.AzurePodIdentityException{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: aadv1.AzurePodIdentityExceptionSpec{PodLabels: labels}}
	}
	s.UpsertException(exc("other", "e", map[string]string{"app": "agent"}))
	if s.excepted(pod) {
		t.Fatal("an exception in another namespace excepted the pod")
	}
	s.UpsertException(exc("apps", "e1", map[string]string{"app": "web", "tier": "X"}))
	s.UpsertException(exc("apps", "e2", map[string]string{"app": "nope"}))
	if !s.excepted(pod) {
		t.Fatal("exception e1 (tier=X, one label enough, value case-insensitive) did not match")
	}
	s.UpsertException(exc("apps", "e1", map[string]string{"Tier": "x"})) // keys are exact
	if s.excepted(pod) {
		t.Fatal("an updated exception kept matching with a key of another case")
	}
	s.UpsertException(exc("apps", "e2", map[string]string{"app": "AGENT"}))
	if !s.excepted(pod) || len(s.exceptions["apps"]) != 2 {
		t.Fatalf("updated e2 should match and apps should hold 2 exceptions, has %d", len(s.exceptions["apps"]))
	}
	s.DeleteException("apps", "e2")
	s.DeleteException("apps", "e1")
	if s.excepted(pod) || s.exceptions["apps"] != nil {
		t.Fatal("deleted exceptions still match or linger")
	}
}
