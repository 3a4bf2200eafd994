package chart_test

import (
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chart"
	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/chartrender"
	"github.com/podidentity/podidentity/internal/testenv"
)

// saPod creates a ServiceAccount and a pod that runs as it on node (no kubelet runs here: the pod
// only has to exist for the apiserver to bind tokens to it).
func saPod(t *testing.T, ns, sa, pod, node string) *corev1.Pod {
	t.Helper()
	env.Create(t, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: sa}})
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: pod}, Spec: corev1.PodSpec{
		ServiceAccountName: sa, NodeName: node, Containers: []corev1.Container{{Name: "app", Image: "example.invalid/app"}}}}
	env.Create(t, p)
	return p
}

func podRef(p *corev1.Pod) *authenticationv1.BoundObjectReference {
	return &authenticationv1.BoundObjectReference{APIVersion: "v1", Kind: "Pod", Name: p.Name, UID: p.UID}
}

// tokenRequest is a TokenRequest as NMI sends it for a federated identity; edit mutates it.
func tokenRequest(bound *corev1.Pod, edit func(*authenticationv1.TokenRequestSpec)) *authenticationv1.TokenRequest {
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences: []string{aadv1.DefaultFederationAudience}, ExpirationSeconds: ptr(int64(3600)), BoundObjectRef: podRef(bound)}}
	if edit != nil {
		edit(&tr.Spec)
	}
	return tr
}

// clientAs authenticates with a real token of the ServiceAccount sa in ns, bound to its pod as a
// DaemonSet pod's projected token is: the policy sees the same userInfo as for NMI on a node.
func clientAs(t *testing.T, ns, sa string, pod *corev1.Pod) kubernetes.Interface {
	t.Helper()
	tr, err := admin(t).CoreV1().ServiceAccounts(ns).CreateToken(testenv.Context(t), sa,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{BoundObjectRef: podRef(pod)}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("minting a token of %s/%s for the test: %v", ns, sa, err)
	}
	cfg := rest.AnonymousClientConfig(env.Config)
	cfg.BearerToken = tr.Status.Token
	return kubernetes.NewForConfigOrDie(cfg)
}

// admin is an admin clientset of the test apiserver.
func admin(t *testing.T) kubernetes.Interface {
	t.Helper()
	return kubernetes.NewForConfigOrDie(env.Config)
}

// Issue 15: NMI may create ServiceAccount tokens, but the chart's admission policy lets it create
// only federation tokens: one allowed audience, bound to a Pod by name and uid, at most 24 hours.
// Proven against the real apiserver, as NMI's ServiceAccount with a pod-bound token (the policy
// sees the TokenRequest object of the serviceaccounts/token subresource); another ServiceAccount
// with the same ClusterRole is not matched.
func TestTokenRequestPolicyLimitsNMI(t *testing.T) {
	ns, app := env.Namespace(t), env.Namespace(t)
	objs := render(t, ns, ns, nil)
	a := newApplier(t)
	for _, o := range objs {
		switch {
		case o.Source == "podidentity/templates/nmi-rbac.yaml" && (o.Kind == "ServiceAccount" || o.Kind == "ClusterRole" || o.Kind == "ClusterRoleBinding"),
			o.Source == "podidentity/templates/admission-policy-tokenrequest.yaml":
			a.apply(t, o, false)
		}
	}
	if find(objs, "ValidatingAdmissionPolicy", "-nmi-tokenrequest") == nil {
		t.Fatalf("the chart renders no TokenRequest admission policy by default")
	}
	if t.Failed() {
		t.FailNow()
	}
	nmiSA := ns + "-podidentity-nmi"
	ctx := testenv.Context(t)
	// Another ServiceAccount holding exactly NMI's ClusterRole.
	env.Create(t, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "other"}})
	env.Create(t, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: ns + "-other"},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: nmiSA},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: ns, Name: "other"}}})

	nmiPod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "nmi-abcde"}, Spec: corev1.PodSpec{
		ServiceAccountName: nmiSA, NodeName: "node-a", Containers: []corev1.Container{{Name: "nmi", Image: "example.invalid/nmi"}}}}
	env.Create(t, nmiPod)
	otherPod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "other"}, Spec: corev1.PodSpec{
		ServiceAccountName: "other", NodeName: "node-a", Containers: []corev1.Container{{Name: "x", Image: "example.invalid/x"}}}}
	env.Create(t, otherPod)
	web := saPod(t, app, "web", "web", "node-b")
	env.Create(t, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: app, Name: "s"}})
	secret := &corev1.Secret{}
	if err := env.Client.Get(ctx, keyOf(app, "s"), secret); err != nil {
		t.Fatal(err)
	}
	nmi, other := clientAs(t, ns, nmiSA, nmiPod), clientAs(t, ns, "other", otherPod)

	create := func(c kubernetes.Interface, ns, sa string, tr *authenticationv1.TokenRequest) error {
		got, err := c.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, tr, metav1.CreateOptions{})
		if err == nil && got.Status.Token == "" {
			t.Errorf("TokenRequest for %s/%s accepted without a token", ns, sa)
		}
		return err
	}
	// RBAC and the policy reach the apiserver's caches asynchronously: wait until the policy
	// refuses a request that RBAC allows.
	for {
		err := create(nmi, app, "web", tokenRequest(web, func(s *authenticationv1.TokenRequestSpec) { s.Audiences = []string{"probe"} }))
		if err != nil && strings.Contains(err.Error(), "TokenRequest by NMI") {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the TokenRequest policy never refused NMI's token with audience probe (last result: %v)", err)
		}
	}

	who := "TokenRequest by NMI (system:serviceaccount:" + ns + ":" + nmiSA + ") for ServiceAccount " + app + "/web refused: "
	refused := []struct {
		name  string
		edit  func(*authenticationv1.TokenRequestSpec)
		wants []string
	}{
		{"apiserver audience", func(s *authenticationv1.TokenRequestSpec) { s.Audiences = []string{"https://kubernetes.default.svc"} },
			[]string{who + "spec.audiences [https://kubernetes.default.svc] is not exactly one federation audience",
				"NMI may request only one of [api://AzureADTokenExchange]", "nmi.federation.audiences"}},
		{"two audiences", func(s *authenticationv1.TokenRequestSpec) {
			s.Audiences = []string{aadv1.DefaultFederationAudience, "https://kubernetes.default.svc"}
		}, []string{"spec.audiences [api://AzureADTokenExchange, https://kubernetes.default.svc] is not exactly one"}},
		{"no audience (the apiserver's own)", func(s *authenticationv1.TokenRequestSpec) { s.Audiences = nil },
			[]string{who + "spec.audiences [", "is not exactly one federation audience"}},
		{"not bound", func(s *authenticationv1.TokenRequestSpec) { s.BoundObjectRef = nil },
			[]string{who + "spec.boundObjectRef is missing", "NMI may request only tokens bound to a Pod (apiVersion v1, kind Pod, name and uid)"}},
		{"bound to a Secret", func(s *authenticationv1.TokenRequestSpec) {
			s.BoundObjectRef = &authenticationv1.BoundObjectReference{APIVersion: "v1", Kind: "Secret", Name: "s", UID: secret.UID}
		}, []string{who + "spec.boundObjectRef names v1 Secret s:", "bound to a Pod"}},
		{"pod without uid", func(s *authenticationv1.TokenRequestSpec) { s.BoundObjectRef.UID = "" },
			[]string{who + "spec.boundObjectRef names v1 Pod web without a uid"}},
		{"too long", func(s *authenticationv1.TokenRequestSpec) { s.ExpirationSeconds = ptr(int64(86401)) },
			[]string{who + "spec.expirationSeconds 86401 is more than 86400 (24 hours)", "spec.federation.tokenExpirationSeconds"}},
	}
	for _, c := range refused {
		err := create(nmi, app, "web", tokenRequest(web, c.edit))
		if err == nil {
			t.Errorf("%s: NMI's TokenRequest was accepted; want the policy's refusal", c.name)
			continue
		}
		for _, w := range c.wants {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: refusal does not say %q:\n%v", c.name, w, err)
			}
		}
	}

	// What federation needs is allowed: the calling pod's ServiceAccount bound to that pod, and
	// (Broker subject) NMI's own, bound to NMI's pod; the longest lifetime an identity may ask.
	if err := create(nmi, app, "web", tokenRequest(web, nil)); err != nil {
		t.Errorf("NMI's federation TokenRequest for %s/web: %v", app, err)
	}
	if err := create(nmi, app, "web", tokenRequest(web, func(s *authenticationv1.TokenRequestSpec) { s.ExpirationSeconds = ptr(int64(86400)) })); err != nil {
		t.Errorf("NMI's federation TokenRequest for 24 hours: %v", err)
	}
	if err := create(nmi, ns, nmiSA, tokenRequest(nmiPod, nil)); err != nil {
		t.Errorf("NMI's broker TokenRequest for its own ServiceAccount: %v", err)
	}
	// The apiserver's own checks still apply behind the policy: a pod of another ServiceAccount.
	if err := create(nmi, app, "web", tokenRequest(otherPod, nil)); err == nil || strings.Contains(err.Error(), "TokenRequest by NMI") {
		t.Errorf("a token of web bound to a pod of another ServiceAccount: %v, want the apiserver's refusal", err)
	}

	// The policy matches NMI only: the same grant held by another ServiceAccount is not limited.
	if err := create(other, app, "web", tokenRequest(web, func(s *authenticationv1.TokenRequestSpec) {
		s.Audiences, s.BoundObjectRef, s.ExpirationSeconds = []string{"https://kubernetes.default.svc"}, nil, ptr(int64(86401))
	})); err != nil {
		t.Errorf("another ServiceAccount with NMI's ClusterRole was refused: %v", err)
	}
}

// nmi.federation.audiences becomes the policy's list; federation off removes the grant and the
// policy; federation without the admission policy does not render.
func TestTokenRequestPolicyValues(t *testing.T) {
	objs := render(t, "r", "n", map[string]any{"nmi": map[string]any{"federation": map[string]any{
		"audiences": []any{"api://AzureADTokenExchange", "api://contoso-exchange"}}}})
	p := find(objs, "ValidatingAdmissionPolicy", "-nmi-tokenrequest")
	if p == nil || !strings.Contains(p.YAML, `['api://AzureADTokenExchange', 'api://contoso-exchange']`) ||
		!strings.Contains(p.YAML, "system:serviceaccount:n:r-podidentity-nmi") {
		t.Errorf("policy with two audiences:\n%v", p)
	}
	cr := decode[rbacv1.ClusterRole](t, find(objs, "ClusterRole", "-nmi"))
	if !grants(cr, "serviceaccounts/token", "create") {
		t.Errorf("NMI's ClusterRole lacks create on serviceaccounts/token by default: %+v", cr.Rules)
	}

	off := render(t, "r", "n", map[string]any{"nmi": map[string]any{"federation": map[string]any{"enabled": false}}})
	if o := find(off, "ValidatingAdmissionPolicy", "-nmi-tokenrequest"); o != nil {
		t.Errorf("nmi.federation.enabled=false still renders %s", o.Name)
	}
	if grants(decode[rbacv1.ClusterRole](t, find(off, "ClusterRole", "-nmi")), "serviceaccounts/token", "create") {
		t.Errorf("nmi.federation.enabled=false still grants create on serviceaccounts/token")
	}

	ch, err := loadOnce()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		vals map[string]any
		want string
	}{
		{map[string]any{"admissionPolicy": map[string]any{"enabled": false}}, "nmi.federation.enabled=true grants NMI create on serviceaccounts/token"},
		{map[string]any{"nmi": map[string]any{"federation": map[string]any{"audiences": []any{}}}}, "audiences"},
		{map[string]any{"nmi": map[string]any{"federation": map[string]any{"audiences": []any{"api://x' || true || '"}}}}, "audiences"},
	} {
		if _, err := renderErr(ch, c.vals); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("values %v: got %v, want an error naming %q", c.vals, err, c.want)
		}
	}
}

func keyOf(ns, name string) client.ObjectKey { return client.ObjectKey{Namespace: ns, Name: name} }

func renderErr(ch *chart.Chart, vals map[string]any) ([]chartrender.Object, error) {
	return chartrender.Render(ch, chartrender.Options{ReleaseName: "r", Namespace: "n", Values: vals})
}

func grants(cr *rbacv1.ClusterRole, resource, verb string) bool {
	for _, r := range cr.Rules {
		for _, res := range r.Resources {
			for _, v := range r.Verbs {
				if res == resource && v == verb {
					return true
				}
			}
		}
	}
	return false
}

// The federation values reach NMI and MIC: NMI's flags, SERVICE_ACCOUNT_NAME and POD_UID for the broker,
// list/watch on ServiceAccounts only for Workload Identity annotations; azureIdentities may be
// federated, with an audience the policy allows.
func TestFederationValuesReachNMI(t *testing.T) {
	objs := render(t, "podidentity", "podidentity", readValues(t, "everything.yaml"))
	nmi := decode[appsv1.DaemonSet](t, find(objs, "DaemonSet", "-nmi"))
	c := nmi.Spec.Template.Spec.Containers[0]
	wantArgs(t, "NMI", c.Args, "--federation-propagation-window=2m", "--honor-workload-identity-annotations=true",
		"--federation-default-tenant-id=72f988bf-0000-4000-8000-000000000001")
	for name, path := range map[string]string{"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace",
		"POD_UID": "metadata.uid", "SERVICE_ACCOUNT_NAME": "spec.serviceAccountName"} {
		var got string
		for _, e := range c.Env {
			if e.Name == name && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
				got = e.ValueFrom.FieldRef.FieldPath
			}
		}
		if got != path {
			t.Errorf("NMI: %s from %q, want the downward API's %s", name, got, path)
		}
	}
	wantArgs(t, "MIC", args(t, objs, "Deployment"), "--skip-federated-assignments=true")
	cr := decode[rbacv1.ClusterRole](t, find(objs, "ClusterRole", "-nmi"))
	if !grants(cr, "serviceaccounts", "watch") || grants(cr, "serviceaccounts", "get") {
		t.Errorf("with honorWorkloadIdentityAnnotations NMI needs list/watch on ServiceAccounts, nothing more: %+v", cr.Rules)
	}
	id := decode[aadv1.AzureIdentity](t, find(objs, "AzureIdentity", "demo-federated"))
	if id.Spec.Federation == nil || id.Spec.Federation.Audience != "api://contoso-exchange" {
		t.Errorf("azureIdentities.demo-federated rendered federation %+v", id.Spec.Federation)
	}

	def := render(t, "podidentity", "podidentity", map[string]any{"azureIdentities": map[string]any{"fed": map[string]any{
		"clientID": "6c3c3f6e-7e0a-4f5b-9d3a-0a1b2c3d4e61", "federation": map[string]any{}}}})
	if id := decode[aadv1.AzureIdentity](t, find(def, "AzureIdentity", "fed")); id.Spec.Federation == nil {
		t.Errorf("azureIdentities.fed.federation {} rendered no spec.federation")
	}
	c = decode[appsv1.DaemonSet](t, find(def, "DaemonSet", "-nmi")).Spec.Template.Spec.Containers[0]
	noArgPrefix(t, "NMI", c.Args, "--federation-propagation-window", "--honor-workload-identity-annotations", "--federation-default-tenant-id")
	noArgPrefix(t, "MIC", args(t, def, "Deployment"), "--skip-federated-assignments")
	if grants(decode[rbacv1.ClusterRole](t, find(def, "ClusterRole", "-nmi")), "serviceaccounts", "watch") {
		t.Errorf("NMI watches ServiceAccounts without honorWorkloadIdentityAnnotations")
	}

	ch, err := loadOnce()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		vals map[string]any
		want string
	}{
		{map[string]any{"azureIdentities": map[string]any{"fed": map[string]any{"clientID": "6c3c3f6e-7e0a-4f5b-9d3a-0a1b2c3d4e61",
			"federation": map[string]any{"audience": "api://other"}}}},
			`azureIdentities.fed.federation.audience "api://other" is not in nmi.federation.audiences`},
		{map[string]any{"nmi": map[string]any{"federation": map[string]any{"enabled": false, "honorWorkloadIdentityAnnotations": true}}},
			"nmi.federation.honorWorkloadIdentityAnnotations=true needs nmi.federation.enabled=true"},
		{map[string]any{"nmi": map[string]any{"federation": map[string]any{"propagationWindow": "5 minutes"}}}, "propagationWindow"},
		{map[string]any{"azureIdentities": map[string]any{"fed": map[string]any{"clientID": "6c3c3f6e-7e0a-4f5b-9d3a-0a1b2c3d4e61",
			"federation": map[string]any{"subject": "Pod"}}}}, "subject"},
	} {
		if _, err := renderErr(ch, c.vals); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("values %v: got %v, want an error naming %q", c.vals, err, c.want)
		}
	}
}
