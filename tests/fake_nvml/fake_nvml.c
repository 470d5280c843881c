/*
 * A fake libnvidia-ml.so.1: the NVML entry points nvidia-ml-py calls for gpucp's agent, answering
 * from a text file instead of a driver, so the real pynvml runs on a machine without a GPU.
 *
 * The file named by $FAKE_NVML_CONFIG is re-read on every call (a test rewrites it to inject
 * failures while an agent runs). One KEY=VALUE per line:
 *   init_error=9                 nvmlInit* returns this code (9 = DRIVER_NOT_LOADED)
 *   driver_version=550.54.15     cuda_version=12040
 *   gpu_count=3
 *   gpu.N.name=...  gpu.N.uuid=...  gpu.N.memory_total_mib=  gpu.N.memory_used_mib=
 *   gpu.N.cc=8.0  gpu.N.mig=0|1  gpu.N.mig_uuids=MIG-a,MIG-b
 *   gpu.N.ecc_uncorrected=0  gpu.N.utilization=35  gpu.N.temperature=40  gpu.N.power_mw=250000
 *   gpu.N.throttle_reasons=0x8   gpu.N.lost=1 (every query of GPU N returns GPU_IS_LOST)
 * A value of "unsupported" makes that query return NVML_ERROR_NOT_SUPPORTED; a missing key too.
 *
 * Build: gcc -shared -fPIC -Wl,-soname,libnvidia-ml.so.1 -o libnvidia-ml.so.1 fake_nvml.c
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int nvmlReturn_t;
typedef void *nvmlDevice_t;
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_UNKNOWN = 999,
};

static int initialized;

/* Copy the value of KEY into out; 1 if found, 0 if the key (or the file) is missing. */
static int lookup(const char *key, char *out, size_t size) {
    const char *path = getenv("FAKE_NVML_CONFIG");
    if (path == NULL) return 0;
    FILE *f = fopen(path, "r");
    if (f == NULL) return 0;
    char line[1024];
    size_t klen = strlen(key);
    int found = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, key, klen) == 0 && line[klen] == '=') {
            char *value = line + klen + 1;
            value[strcspn(value, "\r\n")] = '\0';
            snprintf(out, size, "%s", value);
            found = 1;
            break;
        }
    }
    fclose(f);
    return found;
}

/* Look up gpu.<index>.<field>: NVML_SUCCESS with the text, or NOT_SUPPORTED. */
static nvmlReturn_t gpu_value(unsigned index, const char *field, char *out, size_t size) {
    char key[128];
    snprintf(key, sizeof key, "gpu.%u.%s", index, field);
    if (!lookup(key, out, size) || strcmp(out, "unsupported") == 0) return NVML_ERROR_NOT_SUPPORTED;
    return NVML_SUCCESS;
}

static nvmlReturn_t gpu_number(unsigned index, const char *field, unsigned long long *value) {
    char text[256];
    nvmlReturn_t ret = gpu_value(index, field, text, sizeof text);
    if (ret == NVML_SUCCESS) *value = strtoull(text, NULL, 0);
    return ret;
}

static unsigned device_count(void) {
    char text[32];
    return lookup("gpu_count", text, sizeof text) ? (unsigned)strtoul(text, NULL, 0) : 0;
}

/* Handles: GPU i is (i + 1); MIG instance m of GPU i is ((i + 1) << 16 | (m + 1)). */
static int is_mig(nvmlDevice_t device) { return ((uintptr_t)device >> 16) != 0; }
static unsigned gpu_of(nvmlDevice_t device) {
    uintptr_t h = (uintptr_t)device;
    return (unsigned)((h >> 16 ? h >> 16 : h) - 1);
}

/* The checks every device query starts with: initialised, a real handle, a GPU still on the bus. */
static nvmlReturn_t check_device(nvmlDevice_t device) {
    char text[32];
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (device == NULL || gpu_of(device) >= device_count()) return NVML_ERROR_INVALID_ARGUMENT;
    if (gpu_value(gpu_of(device), "lost", text, sizeof text) == NVML_SUCCESS && strcmp(text, "1") == 0)
        return NVML_ERROR_GPU_IS_LOST;
    return NVML_SUCCESS;
}

#define CHECK(device) do { nvmlReturn_t r_ = check_device(device); if (r_ != NVML_SUCCESS) return r_; } while (0)

static nvmlReturn_t copy_text(const char *text, char *out, unsigned length) {
    if (out == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(text) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(out, text);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    char text[32];
    if (lookup("init_error", text, sizeof text) && strtol(text, NULL, 0) != 0) return (nvmlReturn_t)strtol(text, NULL, 0);
    initialized = 1;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    initialized = 0;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case 9: return "Driver Not Loaded";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    char text[96];
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (!lookup("driver_version", text, sizeof text)) return NVML_ERROR_NOT_SUPPORTED;
    return copy_text(text, version, length);
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *version) {
    char text[32];
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (version == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (!lookup("cuda_version", text, sizeof text)) return NVML_ERROR_NOT_SUPPORTED;
    *version = (int)strtol(text, NULL, 0);
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *version) { return nvmlSystemGetCudaDriverVersion(version); }

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *count = device_count();
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (device == NULL || index >= device_count()) return NVML_ERROR_INVALID_ARGUMENT;
    *device = (nvmlDevice_t)(uintptr_t)(index + 1);
    return check_device(*device);
}

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index) {
    CHECK(device);
    *index = gpu_of(device);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    char text[256];
    CHECK(device);
    nvmlReturn_t ret = gpu_value(gpu_of(device), "name", text, sizeof text);
    return ret == NVML_SUCCESS ? copy_text(text, name, length) : ret;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    char text[1024];
    CHECK(device);
    if (is_mig(device)) {
        unsigned m = (unsigned)((uintptr_t)device & 0xffff) - 1;
        if (gpu_value(gpu_of(device), "mig_uuids", text, sizeof text) != NVML_SUCCESS) return NVML_ERROR_NOT_FOUND;
        char *item = strtok(text, ",");
        for (unsigned i = 0; item != NULL && i < m; i++) item = strtok(NULL, ",");
        return item == NULL ? NVML_ERROR_NOT_FOUND : copy_text(item, uuid, length);
    }
    nvmlReturn_t ret = gpu_value(gpu_of(device), "uuid", text, sizeof text);
    return ret == NVML_SUCCESS ? copy_text(text, uuid, length) : ret;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    unsigned long long total, used = 0;
    CHECK(device);
    nvmlReturn_t ret = gpu_number(gpu_of(device), "memory_total_mib", &total);
    if (ret != NVML_SUCCESS) return ret;
    gpu_number(gpu_of(device), "memory_used_mib", &used);
    memory->total = total << 20;
    memory->used = used << 20;
    memory->free = (total - used) << 20;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t device, int *major, int *minor) {
    char text[32];
    CHECK(device);
    nvmlReturn_t ret = gpu_value(gpu_of(device), "cc", text, sizeof text);
    if (ret != NVML_SUCCESS) return ret;
    char *dot = strchr(text, '.');
    *major = (int)strtol(text, NULL, 10);
    *minor = dot != NULL ? (int)strtol(dot + 1, NULL, 10) : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *current, unsigned int *pending) {
    unsigned long long mode;
    CHECK(device);
    nvmlReturn_t ret = gpu_number(gpu_of(device), "mig", &mode);
    if (ret != NVML_SUCCESS) return ret;
    *current = *pending = (unsigned)mode;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count) {
    char text[1024];
    CHECK(device);
    if (gpu_value(gpu_of(device), "mig_uuids", text, sizeof text) != NVML_SUCCESS) return NVML_ERROR_NOT_SUPPORTED;
    unsigned n = 0;
    for (char *item = strtok(text, ","); item != NULL; item = strtok(NULL, ",")) n++;
    *count = n;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index, nvmlDevice_t *mig) {
    unsigned count = 0;
    nvmlReturn_t ret = nvmlDeviceGetMaxMigDeviceCount(device, &count);
    if (ret != NVML_SUCCESS) return ret;
    if (index >= count) return NVML_ERROR_NOT_FOUND;
    *mig = (nvmlDevice_t)(uintptr_t)(((uintptr_t)(gpu_of(device) + 1) << 16) | (index + 1));
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t device, int error_type, int counter_type, unsigned long long *count) {
    CHECK(device);
    /* Only uncorrected (1) volatile (0) errors are described; corrected ones are always 0. */
    if (counter_type != 0) return NVML_ERROR_NOT_SUPPORTED;
    if (error_type != 1) {
        unsigned long long ignored;
        nvmlReturn_t ret = gpu_number(gpu_of(device), "ecc_uncorrected", &ignored);
        if (ret == NVML_SUCCESS) *count = 0;
        return ret;
    }
    return gpu_number(gpu_of(device), "ecc_uncorrected", count);
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization) {
    unsigned long long gpu;
    CHECK(device);
    nvmlReturn_t ret = gpu_number(gpu_of(device), "utilization", &gpu);
    if (ret != NVML_SUCCESS) return ret;
    utilization->gpu = (unsigned)gpu;
    utilization->memory = (unsigned)gpu;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, int sensor, unsigned int *temperature) {
    unsigned long long value;
    CHECK(device);
    if (sensor != 0) return NVML_ERROR_NOT_SUPPORTED;
    nvmlReturn_t ret = gpu_number(gpu_of(device), "temperature", &value);
    if (ret == NVML_SUCCESS) *temperature = (unsigned)value;
    return ret;
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *milliwatts) {
    unsigned long long value;
    CHECK(device);
    nvmlReturn_t ret = gpu_number(gpu_of(device), "power_mw", &value);
    if (ret == NVML_SUCCESS) *milliwatts = (unsigned)value;
    return ret;
}

nvmlReturn_t nvmlDeviceGetCurrentClocksEventReasons(nvmlDevice_t device, unsigned long long *reasons) {
    CHECK(device);
    return gpu_number(gpu_of(device), "throttle_reasons", reasons);
}

nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t device, unsigned long long *reasons) {
    return nvmlDeviceGetCurrentClocksEventReasons(device, reasons);
}
