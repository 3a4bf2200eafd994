package sandbox

import (
	"context"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
)

// NMIServiceAccount is NMI's ServiceAccount in MICNamespace, named as the chart names it for a
// release called podidentity. Broker identities (spec.federation.subject Broker) present its
// tokens: their federated credential's subject is FederatedSubject(MICNamespace, NMIServiceAccount).
const NMIServiceAccount = "podidentity-nmi"

// nmiDaemonSet is the DaemonSet whose pods stand for the NMI processes.
const nmiDaemonSet = "podidentity-nmi"

// nmiPods gives every node an NMI pod, as the chart's DaemonSet would: NMI's ServiceAccount and a
// DaemonSet whose pods (hostNetwork, tolerating every taint) only sleep, since NMI itself runs as
// a process in the node's namespace. Each NMI gets its pod through the downward-API variables the
// chart sets, so broker tokens are bound to it and NMI finds its DaemonSet as it does in a
// cluster. It returns each node's pod.
func (s *Sandbox) nmiPods(ctx context.Context) (map[string]*corev1.Pod, error) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: MICNamespace}}
	if _, err := s.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("creating namespace %s: %w", MICNamespace, err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: MICNamespace, Name: NMIServiceAccount}}
	if _, err := s.Client.CoreV1().ServiceAccounts(MICNamespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("creating NMI's ServiceAccount %s/%s: %w", MICNamespace, NMIServiceAccount, err)
	}
	labels := map[string]string{"app.kubernetes.io/name": "podidentity", "app.kubernetes.io/component": "nmi"}
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: MICNamespace, Name: nmiDaemonSet, Labels: labels},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					ServiceAccountName: NMIServiceAccount, HostNetwork: true,
					TerminationGracePeriodSeconds: ptr.To(int64(0)),
					Tolerations:                   []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
					// NMI runs as a process next to this pod (components.go); the pod only sleeps.
					Containers: []corev1.Container{{Name: "nmi", Image: "ghcr.io/podidentity/nmi", Command: []string{"sleep", "infinity"}}},
				},
			},
		},
	}
	if _, err := s.Client.AppsV1().DaemonSets(MICNamespace).Create(ctx, ds, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("creating NMI's DaemonSet %s/%s: %w", MICNamespace, nmiDaemonSet, err)
	}
	byNode := map[string]*corev1.Pod{}
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, s.Opts.StartTimeout, true, func(ctx context.Context) (bool, error) {
		l, err := s.Client.CoreV1().Pods(MICNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=nmi"})
		if err != nil {
			return false, nil
		}
		for i := range l.Items {
			if p := &l.Items[i]; p.Spec.NodeName != "" && p.DeletionTimestamp == nil {
				byNode[p.Spec.NodeName] = p
			}
		}
		for _, n := range s.Nodes {
			if byNode[n.Name] == nil {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("the DaemonSet %s/%s did not give every node a pod within %s (%d of %d have one): %w",
			MICNamespace, nmiDaemonSet, s.Opts.StartTimeout, len(byNode), len(s.Nodes), err)
	}
	return byNode, nil
}

// podEnv is what the chart's downward API gives NMI about its own pod.
func podEnv(p *corev1.Pod) []string {
	return []string{"POD_NAME=" + p.Name, "POD_NAMESPACE=" + p.Namespace, "POD_UID=" + string(p.UID),
		"SERVICE_ACCOUNT_NAME=" + p.Spec.ServiceAccountName}
}
