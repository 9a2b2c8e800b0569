// Which Corral namespace a CNI attachment gets: the config's `namespace`, or with
// `namespaceFromPod` the pod's Kubernetes namespace from CNI_ARGS (what containerd sends).
import { describe, expect, it } from 'vitest';
import { attachmentNamespace, cniArg, CniError, parseNetConf } from '../../api/cni.js';

const K8S_ARGS = 'IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1';
const conf = (extra: object) => parseNetConf(JSON.stringify({ cniVersion: '1.0.0', name: 'corral', type: 'corral', namespace: 'base', ...extra }));

describe('the namespace of an attachment', () => {
  it('is the config namespace unless the config asks for the pod\'s', () => {
    expect(attachmentNamespace(conf({}), K8S_ARGS)).toBe('base');
    expect(attachmentNamespace(conf({ namespaceFromPod: false }), K8S_ARGS)).toBe('base');
  });

  it('is the pod\'s Kubernetes namespace with namespaceFromPod, the config namespace without one', () => {
    expect(attachmentNamespace(conf({ namespaceFromPod: true }), K8S_ARGS)).toBe('shop');
    expect(attachmentNamespace(conf({ namespaceFromPod: true }), '')).toBe('base');
    expect(attachmentNamespace(conf({ namespaceFromPod: true }), 'IgnoreUnknown=1')).toBe('base');
    expect(cniArg(K8S_ARGS, 'K8S_POD_NAME')).toBe('web-0');
  });

  it('rejects a namespaceFromPod that is not a boolean, and a pod namespace that is not a DNS label', () => {
    expect(() => conf({ namespaceFromPod: 'yes' })).toThrow(/"namespaceFromPod" "yes" must be true or false/);
    const e = (() => {
      try {
        attachmentNamespace(conf({ namespaceFromPod: true }), 'K8S_POD_NAMESPACE=Bad_NS');
      } catch (err) {
        return err as CniError;
      }
    })();
    expect(e).toBeInstanceOf(CniError);
    expect(e!.code).toBe(7);
    expect(e!.message).toMatch(/K8S_POD_NAMESPACE "Bad_NS" .* is not a DNS label/);
  });
});
