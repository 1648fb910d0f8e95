//! CAS transfers: FindMissingBlobs, BatchUpdateBlobs / BatchReadBlobs for
//! small blobs, and chunked ByteStream Write / Read for blobs that do not fit
//! in one batch. Every blob read back is verified against its digest.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    batch_update_blobs_request,
    content_addressable_storage_client::ContentAddressableStorageClient, digest_function,
    BatchReadBlobsRequest, BatchUpdateBlobsRequest, Digest, FindMissingBlobsRequest,
};
use bazel_remote_apis::google::bytestream::{
    byte_stream_client::ByteStreamClient, ReadRequest, WriteRequest,
};
use tonic::transport::Channel;

use super::{Client, MAX_MESSAGE_BYTES};
use crate::digest::{
    digest_string, random_uuid, read_resource_name, validate_digest, verify, write_resource_name,
    Blob,
};
use crate::error::{Error, Result, RpcStatus};

/// Per-blob framing allowance inside a batch request (digest + tags).
const PER_BLOB_OVERHEAD: usize = 160;
/// Headroom for the request envelope (instance name, ...).
const BATCH_HEADROOM: usize = 4096;
/// Digests per FindMissingBlobs request (~100 bytes each).
const FIND_MISSING_CHUNK: usize = 10_000;
const SHA256: i32 = digest_function::Value::Sha256 as i32;

fn cas(ch: Channel) -> ContentAddressableStorageClient<Channel> {
    ContentAddressableStorageClient::new(ch).max_decoding_message_size(MAX_MESSAGE_BYTES)
}

fn bytestream(ch: Channel) -> ByteStreamClient<Channel> {
    ByteStreamClient::new(ch).max_decoding_message_size(MAX_MESSAGE_BYTES)
}

/// Greedily groups items of the given sizes into batches under `limit`.
fn batches(sizes: &[usize], limit: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut cur = Vec::new();
    let mut cur_size = 0;
    for (i, s) in sizes.iter().enumerate() {
        let s = s + PER_BLOB_OVERHEAD;
        if !cur.is_empty() && cur_size + s > limit {
            out.push(std::mem::take(&mut cur));
            cur_size = 0;
        }
        cur.push(i);
        cur_size += s;
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

impl Client {
    /// Largest blob that goes into a batch request; larger ones use ByteStream.
    async fn batch_limit(&self) -> Result<usize> {
        Ok(self
            .capabilities_async()
            .await?
            .max_batch_bytes
            .saturating_sub(BATCH_HEADROOM))
    }

    fn fits_batch(size: i64, limit: usize) -> bool {
        (size as usize).saturating_add(PER_BLOB_OVERHEAD) <= limit
    }

    /// Returns the subset of `digests` the CAS does not have (order kept,
    /// duplicates removed).
    pub fn find_missing_blobs(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        self.block_on(self.find_missing_async(digests))
    }

    pub(crate) async fn find_missing_async(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        const OP: &str = "ContentAddressableStorage.FindMissingBlobs";
        let mut seen = std::collections::HashSet::new();
        let unique: Vec<Digest> = digests
            .iter()
            .filter(|d| seen.insert(d.hash.clone()))
            .cloned()
            .collect();
        let mut missing = Vec::new();
        for chunk in unique.chunks(FIND_MISSING_CHUNK) {
            let t = self.opts.rpc_timeout;
            let resp = self
                .unary(OP, t, |ch| {
                    let req = Self::request(
                        FindMissingBlobsRequest {
                            instance_name: self.instance.clone(),
                            blob_digests: chunk.to_vec(),
                            digest_function: SHA256,
                        },
                        t,
                    );
                    async move { cas(ch).find_missing_blobs(req).await }
                })
                .await?;
            let asked: std::collections::HashSet<&str> =
                chunk.iter().map(|d| d.hash.as_str()).collect();
            for d in resp.missing_blob_digests {
                if !asked.contains(d.hash.as_str()) {
                    return Err(self.bad(
                        OP,
                        format!("server reported unrequested digest {}", digest_string(&d)),
                    ));
                }
                missing.push(d);
            }
        }
        Ok(missing)
    }

    /// Uploads blobs (batched, ByteStream for large ones). Does not check
    /// what is already present: see [`Client::upload_missing`].
    pub fn upload_blobs(&self, blobs: &[Blob]) -> Result<()> {
        self.block_on(self.upload_async(blobs))
    }

    /// FindMissingBlobs then uploads only the missing ones. Returns how many
    /// blobs were uploaded.
    pub fn upload_missing(&self, blobs: &[Blob]) -> Result<usize> {
        self.block_on(self.upload_missing_async(blobs))
    }

    pub(crate) async fn upload_missing_async(&self, blobs: &[Blob]) -> Result<usize> {
        let digests: Vec<Digest> = blobs.iter().map(|b| b.digest.clone()).collect();
        let missing: std::collections::HashSet<String> = self
            .find_missing_async(&digests)
            .await?
            .into_iter()
            .map(|d| d.hash)
            .collect();
        let mut done = std::collections::HashSet::new();
        let todo: Vec<Blob> = blobs
            .iter()
            .filter(|b| missing.contains(&b.digest.hash) && done.insert(b.digest.hash.clone()))
            .cloned()
            .collect();
        self.upload_async(&todo).await?;
        Ok(todo.len())
    }

    pub(crate) async fn upload_async(&self, blobs: &[Blob]) -> Result<()> {
        const OP: &str = "ContentAddressableStorage.BatchUpdateBlobs";
        let limit = self.batch_limit().await?;
        let (small, large): (Vec<&Blob>, Vec<&Blob>) = blobs
            .iter()
            .partition(|b| Self::fits_batch(b.digest.size_bytes, limit));
        for b in large {
            self.bytestream_write_async(b).await?;
        }
        let sizes: Vec<usize> = small.iter().map(|b| b.data.len()).collect();
        for batch in batches(&sizes, limit) {
            let t = self.opts.rpc_timeout;
            let requests: Vec<batch_update_blobs_request::Request> = batch
                .iter()
                .map(|&i| batch_update_blobs_request::Request {
                    digest: Some(small[i].digest.clone()),
                    data: small[i].data.clone(),
                    compressor: 0,
                })
                .collect();
            let resp = self
                .unary(OP, t, |ch| {
                    let req = Self::request(
                        BatchUpdateBlobsRequest {
                            instance_name: self.instance.clone(),
                            requests: requests.clone(),
                            digest_function: SHA256,
                        },
                        t,
                    );
                    async move { cas(ch).batch_update_blobs(req).await }
                })
                .await?;
            for r in resp.responses {
                let status = r.status.unwrap_or_default();
                if status.code != 0 {
                    let d = r.digest.map(|d| digest_string(&d)).unwrap_or_default();
                    return Err(Error::Rpc {
                        server: self.server.clone(),
                        op: format!("{OP} (blob {d})"),
                        status: RpcStatus::from_code(status.code, status.message),
                    });
                }
            }
        }
        Ok(())
    }

    /// Reads blobs, returned in the order of `digests`. Each is verified.
    pub fn read_blobs(&self, digests: &[Digest]) -> Result<Vec<Vec<u8>>> {
        self.block_on(self.read_async(digests))
    }

    /// Reads one blob.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        Ok(self
            .block_on(self.read_async(std::slice::from_ref(digest)))?
            .remove(0))
    }

    pub(crate) async fn read_async(&self, digests: &[Digest]) -> Result<Vec<Vec<u8>>> {
        const OP: &str = "ContentAddressableStorage.BatchReadBlobs";
        for d in digests {
            validate_digest(d).map_err(Error::InvalidArgument)?;
        }
        let limit = self.batch_limit().await?;
        let mut out: Vec<Option<Vec<u8>>> = vec![None; digests.len()];
        let mut small = Vec::new();
        for (i, d) in digests.iter().enumerate() {
            if d.size_bytes == 0 {
                out[i] = Some(Vec::new());
            } else if Self::fits_batch(d.size_bytes, limit) {
                small.push(i);
            } else {
                out[i] = Some(self.bytestream_read_async(d).await?);
            }
        }
        let sizes: Vec<usize> = small
            .iter()
            .map(|&i| digests[i].size_bytes as usize)
            .collect();
        for batch in batches(&sizes, limit) {
            let want: Vec<Digest> = batch.iter().map(|&j| digests[small[j]].clone()).collect();
            let t = self.opts.rpc_timeout;
            let resp = self
                .unary(OP, t, |ch| {
                    let req = Self::request(
                        BatchReadBlobsRequest {
                            instance_name: self.instance.clone(),
                            digests: want.clone(),
                            acceptable_compressors: vec![],
                            digest_function: SHA256,
                        },
                        t,
                    );
                    async move { cas(ch).batch_read_blobs(req).await }
                })
                .await?;
            let mut got: HashMap<String, Vec<u8>> = HashMap::new();
            for r in resp.responses {
                let d = r
                    .digest
                    .ok_or_else(|| self.bad(OP, "response entry without digest"))?;
                let status = r.status.unwrap_or_default();
                if status.code != 0 {
                    return Err(Error::Rpc {
                        server: self.server.clone(),
                        op: format!("{OP} (blob {})", digest_string(&d)),
                        status: RpcStatus::from_code(status.code, status.message),
                    });
                }
                if r.compressor != 0 {
                    return Err(
                        self.bad(OP, format!("unrequested compressor {} used", r.compressor))
                    );
                }
                verify(&d, &r.data).map_err(|e| self.bad(OP, e))?;
                got.insert(d.hash, r.data);
            }
            for &j in &batch {
                let i = small[j];
                let data = got.get(&digests[i].hash).cloned().ok_or_else(|| {
                    self.bad(
                        OP,
                        format!("blob {} missing from response", digest_string(&digests[i])),
                    )
                })?;
                out[i] = Some(data);
            }
        }
        out.into_iter()
            .enumerate()
            .map(|(i, d)| {
                d.ok_or_else(|| {
                    self.bad(OP, format!("blob {} not read", digest_string(&digests[i])))
                })
            })
            .collect()
    }

    /// Deadline for a streamed transfer of `size` bytes: one RPC timeout per
    /// 8 MiB (at least one).
    fn stream_timeout(&self, size: i64) -> Duration {
        let chunks = (size.max(0) as u64 / (8 * 1024 * 1024)) as u32 + 1;
        self.opts.rpc_timeout.saturating_mul(chunks)
    }

    /// Uploads one blob through ByteStream Write in chunks.
    pub fn bytestream_write(&self, blob: &Blob) -> Result<()> {
        self.block_on(self.bytestream_write_async(blob))
    }

    pub(crate) async fn bytestream_write_async(&self, blob: &Blob) -> Result<()> {
        const OP: &str = "ByteStream.Write";
        let data: Arc<Vec<u8>> = Arc::new(blob.data.clone());
        let chunk = self
            .opts
            .bytestream_chunk_bytes
            .clamp(1024, 3 * 1024 * 1024);
        let t = self.stream_timeout(blob.digest.size_bytes);
        let op = format!("{OP} {}", digest_string(&blob.digest));
        let resp = self
            .unary(&op, t, |ch| {
                let name = write_resource_name(&self.instance, &random_uuid(), &blob.digest);
                let data = data.clone();
                let n = data.len().div_ceil(chunk).max(1);
                let reqs = (0..n).map(move |i| {
                    let start = i * chunk;
                    let end = (start + chunk).min(data.len());
                    WriteRequest {
                        resource_name: if i == 0 { name.clone() } else { String::new() },
                        write_offset: start as i64,
                        finish_write: i + 1 == n,
                        data: data[start..end].to_vec(),
                    }
                });
                let req = Self::request(tokio_stream::iter(reqs), t);
                async move { bytestream(ch).write(req).await }
            })
            .await?;
        // A server that already had the blob may answer early with the full size.
        if resp.committed_size != blob.digest.size_bytes {
            return Err(self.bad(
                &op,
                format!(
                    "committed_size {} != blob size {}",
                    resp.committed_size, blob.digest.size_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Downloads one blob through ByteStream Read and verifies it.
    pub fn bytestream_read(&self, digest: &Digest) -> Result<Vec<u8>> {
        self.block_on(self.bytestream_read_async(digest))
    }

    pub(crate) async fn bytestream_read_async(&self, digest: &Digest) -> Result<Vec<u8>> {
        let mut data = Vec::with_capacity((digest.size_bytes.max(0) as usize).min(64 * 1024 * 1024));
        let data_ref = std::cell::RefCell::new(&mut data);
        self.bytestream_read_into(
            digest,
            &mut || {
                data_ref.borrow_mut().clear();
                Ok(())
            },
            &mut |chunk| {
                data_ref.borrow_mut().extend_from_slice(chunk);
                Ok(())
            },
        )
        .await?;
        Ok(data)
    }

    /// Downloads one blob through ByteStream Read into `file` (written from
    /// its start), hashing as it streams, so memory holds one chunk however
    /// large the blob.
    pub fn bytestream_read_to(&self, digest: &Digest, file: &mut std::fs::File) -> Result<()> {
        use std::io::{Seek, Write};
        let op = format!("ByteStream.Read {}", digest_string(digest));
        let io = |e: std::io::Error| Error::io(format!("{op}: writing the download"), e);
        let file = std::cell::RefCell::new(file);
        self.block_on(self.bytestream_read_into(
            digest,
            &mut || {
                let mut f = file.borrow_mut();
                f.set_len(0).map_err(io)?;
                f.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
                Ok(())
            },
            &mut |chunk| file.borrow_mut().write_all(chunk).map_err(io),
        ))
    }

    /// ByteStream Read of `digest` into `sink`, verified as it streams; a
    /// transient failure calls `reset` and starts again.
    async fn bytestream_read_into(
        &self,
        digest: &Digest,
        reset: &mut dyn FnMut() -> Result<()>,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let op = format!("ByteStream.Read {}", digest_string(digest));
        let t = self.stream_timeout(digest.size_bytes);
        let mut attempt = 0;
        loop {
            reset()?;
            let res = tokio::time::timeout(t, self.bytestream_read_once(digest, &op, t, sink)).await;
            let err = match res {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => e,
                Err(_) => self.timeout_err(&op, t),
            };
            if !err.is_transient() || attempt >= self.opts.retries {
                return Err(err);
            }
            attempt += 1;
            tokio::time::sleep(super::backoff(attempt)).await;
        }
    }

    async fn bytestream_read_once(
        &self,
        digest: &Digest,
        op: &str,
        t: Duration,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let req = Self::request(
            ReadRequest {
                resource_name: read_resource_name(&self.instance, digest),
                read_offset: 0,
                read_limit: 0,
            },
            t,
        );
        let mut stream = bytestream(self.channel())
            .read(req)
            .await
            .map_err(|s| self.rpc_err(op, &s))?
            .into_inner();
        let expected = digest.size_bytes.max(0) as u64;
        let mut received = 0u64;
        let mut hasher = crate::digest::Hasher::new();
        while let Some(msg) = stream.message().await.map_err(|s| self.rpc_err(op, &s))? {
            received += msg.data.len() as u64;
            if received > expected {
                return Err(self.bad(
                    op,
                    format!("server sent more than the {expected} bytes expected"),
                ));
            }
            hasher.update(&msg.data);
            sink(&msg.data)?;
        }
        let got = hasher.finish();
        if got.hash != digest.hash || got.size_bytes != digest.size_bytes {
            return Err(self.bad(
                op,
                format!("the data read has digest {}, not {}", digest_string(&got), digest_string(digest)),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batching() {
        let limit = 1000;
        let b = batches(&[100, 100, 600, 10], limit);
        assert_eq!(b, vec![vec![0, 1], vec![2, 3]]);
        assert_eq!(batches(&[], limit), Vec::<Vec<usize>>::new());
        assert!(Client::fits_batch(800, limit));
        assert!(!Client::fits_batch(900, limit));
    }
}
