/* kraft-xtask's real example: a Unikraft 0.16.3 unikernel on musl. */
#include <stdio.h>
#include <string.h>
#include <sys/utsname.h>
#include <uk/config.h>

int main(int argc, char *argv[])
{
	struct utsname name;

	printf("%s\n", CONFIG_APPHELLOWORLD_GREETING);
	if (uname(&name) == 0)
		printf("%s %s on %s\n", name.sysname, name.release, name.machine);
	for (int i = 1; i < argc; i++)
		printf("argv[%d] = %s (%zu bytes)\n", i, argv[i], strlen(argv[i]));
	return 0;
}
