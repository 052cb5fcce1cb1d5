import os

from django.http import JsonResponse


def index(request):
    return JsonResponse({"message": "Hello, World!", "framework": "django", "items": [1, 2, 3]})


def pid(request):
    return JsonResponse({"pid": os.getpid()})
